"""A finished cache is freed as soon as its last reference goes, without waiting for Python's cyclic GC.

Why: the GC runs on object counts, not bytes; a cache that is a reference cycle (layer -> cache -> layers) outlives
its prompt by minutes, and a long multi-method run at 4K grew by ~100 MB a prompt until the machine swapped. These
tests hold the GC off and check that a weak reference dies with the last strong one, over the method matrix, a
shared prefill and a VLM; and that copies (deepcopy, pickle) keep each layer pointing at its own cache."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref
from collections.abc import Iterator

import pytest
import torch
from conftest import tiny_inputs

from akvq import api
from akvq.cache import AKVQCache
from akvq.policies import make_policy
from akvq.tasks import generation

METHODS = ["fp16", "rtn2", "kivi2", "skvq", "smoothquant", "akvq_rtn", "akvq", "akvq_plus", "akvq_plus_w8"]


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("method", METHODS)
def test_cache_freed_without_gc(method: str, no_gc: None) -> None:
    loaded, inputs = tiny_inputs("llava")
    out, cache = api.generate(loaded.model, inputs, make_policy(method), max_new_tokens=3, do_sample=False)
    assert isinstance(cache, AKVQCache) and cache.get_seq_length() > 0
    ref = weakref.ref(cache)
    layer_ref = weakref.ref(cache.layers[0])
    del cache
    assert ref() is None, f"{method}: the cache lives on after its last reference (a reference cycle)"
    assert layer_ref() is None


def test_shared_prefill_caches_freed_without_gc(no_gc: None) -> None:
    """generate_shared's caches (the first one's prompt K/V handed to the others) go once each is dropped."""
    loaded, inputs = tiny_inputs("llava")
    policies = [make_policy(m) for m in ("fp16", "kivi2", "akvq")]
    kw = generation._gen_kwargs(loaded, 3, False, {})
    refs = [
        weakref.ref(cache) for _seq, cache, _s in api.generate_shared(loaded.model, inputs, policies, 3, **kw)
    ]
    assert len(refs) == 3
    assert all(r() is None for r in refs)


def test_layer_without_its_cache_says_so(no_gc: None) -> None:
    loaded, inputs = tiny_inputs("llama")
    _out, cache = api.generate(loaded.model, inputs, make_policy("akvq"), max_new_tokens=2, do_sample=False)
    layer = cache.layers[0]
    del cache
    with pytest.raises(ReferenceError, match="cache is gone"):
        _ = layer.owner


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_cache_layers_point_at_the_copy(how: str) -> None:
    """A copy decodes on by itself: its layers ask the copy (window 16: most of the prompt is quantized)."""
    loaded, inputs = tiny_inputs("llama")
    policy = make_policy("akvq", window=16)
    _out, cache = api.generate(loaded.model, inputs, policy, max_new_tokens=2, do_sample=False)
    twin = copy.deepcopy(cache) if how == "deepcopy" else pickle.loads(pickle.dumps(cache))
    assert all(layer.owner is twin for layer in twin.layers)
    assert all(layer.owner is cache for layer in cache.layers)
    assert twin.layers[0].k.n_q > 0  # quantized tokens were copied, not only the window
    for a, b in zip(cache.layers, twin.layers, strict=True):
        assert a.k is not b.k
        assert torch.equal(a.k.materialize(torch.float32), b.k.materialize(torch.float32))
        assert torch.equal(a.v.materialize(torch.float32), b.v.materialize(torch.float32))
    del cache  # the copy stands alone
    step = torch.full((inputs["input_ids"].shape[0], 1), 5, dtype=torch.long)
    with torch.inference_mode():
        loaded.model(input_ids=step, **{api.cache_kwarg(): twin}, use_cache=True)
    assert all(layer.owner is twin for layer in twin.layers)
