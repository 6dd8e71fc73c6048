"""The transformers integration: per-layer packed storage built from a policy."""

from akvq.cache.cache import AKVQCache, MemoryReport
from akvq.cache.layer import AKVQLayer

__all__ = ["AKVQCache", "AKVQLayer", "MemoryReport"]
