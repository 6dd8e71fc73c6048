"""Adapters that expose akvq to other tools' plugin systems (lmms-eval's model registry)."""
