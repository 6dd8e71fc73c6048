"""placeholder"""
def available() -> bool:
    return False
