"""akvq: attention-aware 2-bit KV-cache quantization (AKVQ-VL) and its baselines as a transformers Cache.

from akvq import make_policy, generate
out, cache = generate(model, inputs, make_policy("akvq"), max_new_tokens=64)
print(cache.memory_report().effective_bits)
"""

from akvq.api import build_cache, generate
from akvq.cache import AKVQCache, MemoryReport
from akvq.policies import POLICIES, make_policy

__all__ = ["POLICIES", "AKVQCache", "MemoryReport", "build_cache", "generate", "make_policy"]
__version__ = "0.1.0"
