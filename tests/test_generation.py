"""One shared prefill for several methods gives each exactly what its own `generate` gives: the same tokens and
the same cache, bit for bit (`akvq.api.generate_shared`), over the method matrix and the VLM families."""

from __future__ import annotations

import pytest
import torch
from conftest import image, tiny

from akvq import api
from akvq.cache import AKVQCache
from akvq.policies import make_policy
from akvq.tasks import generation
from akvq.tasks.generation import GenStats

# akvq_plus_w8's 8-bit window is read quantized by the prefill: it shares with nobody and runs alone
METHODS = ["fp16", "rtn2", "kivi2", "skvq", "smoothquant", "akvq_rtn", "akvq", "akvq_plus", "akvq_plus_w8"]
FILLER = "the quick brown fox jumps over the lazy dog " * 12


def _batch(kind: str) -> tuple[list[str], list[list]]:
    """Two prompts of different lengths (left padding) longer than the 128-token window, with 2 and 1 images."""
    return (
        [f"<image> {FILLER} <image> describe both", f"{FILLER} <image> what is it"],
        [[image(60, 40, 1), image(40, 70, 2)], [image(56, 56, 3)]],
    )


def _prefills(model: torch.nn.Module) -> tuple[list[int], object]:
    """Count the forwards that see more than one token (prefills)."""
    seen: list[int] = []

    def hook(_mod, args, kwargs):  # noqa: ANN001
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            seen.append(ids.shape[1])

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_shared_prefill_equals_separate_generation(kind: str) -> None:
    loaded = tiny(kind)
    prompts, images = _batch(kind)
    policies = [make_policy(m) for m in METHODS]
    inputs = generation._inputs(loaded, prompts, images)
    kw = generation._gen_kwargs(loaded, 6, False, {})
    alone = [api.generate(loaded.model, inputs, p, max_new_tokens=6, **kw) for p in policies]
    shareable = [p for p in policies if api.prefill_reads(loaded.model, p) is not None]
    assert len(shareable) == len(METHODS) - 1  # all but the 8-bit window
    seen, handle = _prefills(loaded.model)
    try:
        shared = list(api.generate_shared(loaded.model, inputs, shareable, 6, **kw))
    finally:
        handle.remove()
    assert len(seen) == 1  # one prefill for all of them
    by_name = dict(zip([p.name + str(i) for i, p in enumerate(policies)], alone, strict=True))
    alone_shareable = [by_name[p.name + str(policies.index(p))] for p in shareable]
    for p, (seq, cache), (seq2, cache2, seconds) in zip(shareable, alone_shareable, shared, strict=True):
        assert torch.equal(seq, seq2), p.name
        assert seconds > 0
        assert isinstance(cache2, AKVQCache)
        assert cache.memory_report() == cache2.memory_report(), p.name
        for a, b in zip(cache.layers, cache2.layers, strict=True):  # what a next step would read
            for x, y in ((a.k, b.k), (a.v, b.v)):
                assert torch.equal(x.materialize(torch.float32), y.materialize(torch.float32)), p.name
        for name in AKVQCache.MASKS:
            m1, m2 = getattr(cache, name), getattr(cache2, name)
            assert (m1 is None and m2 is None) or torch.equal(m1, m2), (p.name, name)


def test_texts_and_numbers_of_a_shared_batch_equal_separate_calls() -> None:
    """`generate_texts_shared` groups by `prefill_reads` (the 8-bit window alone) and counts what each run alone
    would: texts, tokens and cache bytes."""
    loaded = tiny("llava")
    prompts, images = _batch("llava")
    policies = [make_policy(m) for m in ("fp16", "akvq", "akvq_plus_w8", "kivi2")]
    alone_stats = [GenStats() for _ in policies]
    alone = [
        generation.generate_texts(loaded, p, prompts, images, max_new_tokens=5, stats=s)
        for p, s in zip(policies, alone_stats, strict=True)
    ]
    shared_stats = [GenStats() for _ in policies]
    seen, handle = _prefills(loaded.model)
    try:
        shared = generation.generate_texts_shared(
            loaded, policies, prompts, images, max_new_tokens=5, stats=shared_stats
        )
    finally:
        handle.remove()
    assert len(seen) == 2  # fp16, akvq and kivi2 together; akvq_plus_w8 alone
    assert shared == alone
    for a, b in zip(alone_stats, shared_stats, strict=True):
        for f in (
            "samples",
            "batches",
            "prompt_tokens",
            "new_tokens",
            "kv_bytes",
            "kv_total_bytes",
            "kv_elements",
        ):
            assert getattr(a, f) == getattr(b, f), f
        assert b.seconds > 0


def test_an_fp32_store_reads_its_prefill_differently() -> None:
    """On an fp32 model `hp_dtype: auto` keeps 16-bit tokens in fp16 and the prefill attends over those; `model`
    keeps fp32: two different prefills, so they are not shared."""
    loaded = tiny("llama")
    assert loaded.model.dtype == torch.float32
    a = api.prefill_reads(loaded.model, make_policy("akvq"))
    b = api.prefill_reads(loaded.model, make_policy("akvq", hp_dtype="model"))
    assert a is not None and b is not None and a != b
    with pytest.raises(ValueError, match="do not read one prefill alike"):
        next(
            api.generate_shared(
                loaded.model, {}, [make_policy("akvq"), make_policy("akvq", hp_dtype="model")], 2
            )
        )
    with pytest.raises(Exception, match="greedy"):
        next(api.generate_shared(loaded.model, {}, [make_policy("akvq")], 2, do_sample=True))
