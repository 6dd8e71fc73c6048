"""The cache inside transformers generate(): one test matrix over every policy and model family."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny, tiny_inputs
from transformers import DynamicCache

from akvq import api
from akvq.bench import memory
from akvq.cache import AKVQCache
from akvq.cache.store import FULL, LOW, ROW_BLOCK, TEXT, TensorStore, token_rows
from akvq.errors import ConfigError
from akvq.policies import POLICIES, make_policy
from akvq.policies.base import TensorPlan
from akvq.quant.uniform import QTensor

# Small windows so that a short test prompt really gets quantized.
SMALL = {
    "fp16": {},
    "rtn": {"bits": 2},
    "kivi": {"residual": 16},
    "skvq": {"window": 8, "sink": 2},
    "smoothquant": {},
    "akvq": {"window": 8, "num_pivots": 3},
}
FAMILIES = ["llama", "llava", "qwen2_vl"]


def storage_bytes(cache: AKVQCache) -> int:
    """Every tensor the cache holds, found by walking the stores (independent of memory_report's sums)."""
    total = 0
    for layer in cache.layers:
        for store in (layer.k, layer.v):
            for v in vars(store).values():
                if isinstance(v, torch.Tensor):
                    total += v.nbytes
                elif isinstance(v, dict):
                    total += sum(q.codes.nbytes + q.scale.nbytes + q.zero.nbytes for q in v.values())
                elif hasattr(v, "codes"):
                    total += v.codes.nbytes + v.scale.nbytes + v.zero.nbytes
    masks = (cache.vision_mask, cache.pivot_mask, cache.attention_mask)
    return total + sum(m.nbytes for m in masks if m is not None)


def test_policy_matrix_covers_every_policy():
    assert set(SMALL) == set(POLICIES) - {"hf_quantized"}  # transformers' own caches: tests/test_peers.py


@pytest.mark.parametrize("family", FAMILIES)
def test_fp16_identical_to_dynamic_cache(family):
    loaded, inputs = tiny_inputs(family)
    model = loaded.model
    kw = dict(max_new_tokens=12, do_sample=False)
    ref = model.generate(**inputs, **{api.cache_kwarg(): DynamicCache(config=model.config)}, **kw)
    out, cache = api.generate(model, inputs, make_policy("fp16", hp_dtype="model"), **kw)
    assert torch.equal(out, ref)
    assert cache.get_seq_length() == out.shape[1] - 1


def test_fp16_identical_in_bfloat16():
    loaded, inputs = tiny_inputs("llama")
    model = loaded.model.to(torch.bfloat16)
    try:
        kw = dict(max_new_tokens=10, do_sample=False)
        ref = model.generate(**inputs, **{api.cache_kwarg(): DynamicCache(config=model.config)}, **kw)
        out, cache = api.generate(model, inputs, make_policy("fp16"), **kw)
        assert torch.equal(out, ref)
        assert cache.memory_report().effective_bits == pytest.approx(16, abs=0.5)
    finally:
        model.to(torch.float32)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_policy_generates(family, name):
    loaded, inputs = tiny_inputs(family)
    policy = make_policy({"policy": name}, **SMALL[name])
    out, cache = api.generate(loaded.model, inputs, policy, max_new_tokens=10, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape == (2, prompt_len + 10)
    assert cache.get_seq_length() == prompt_len + 9  # every token stays; the last generated one is not cached
    report = cache.memory_report()
    assert report.total_bytes == storage_bytes(cache)
    layer = cache.layers[0]
    if name != "fp16":
        assert layer.k.n_q > 0 and layer.v.n_q > 0, "the prompt must have left the window"
        assert report.effective_bits < 16


def test_sampling_runs():
    loaded, inputs = tiny_inputs("llama")
    torch.manual_seed(0)
    out, _ = api.generate(
        loaded.model, inputs, make_policy("akvq", window=8), max_new_tokens=6, do_sample=True, top_k=20
    )
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6


def _layer_roundtrip(policy, k, v, steps: int = 3, **masks):
    """Drive one cache layer by hand: prefill, then `steps` decode tokens; return the cache and what it read."""
    cache = AKVQCache(policy, 1)
    for key, m in masks.items():
        getattr(cache, f"set_{key}")(m)
    p = k.shape[2] - steps
    cache.update(k[:, :, :p], v[:, :, :p], 0)
    for i in range(p, k.shape[2]):
        rk, rv = cache.update(k[:, :, i : i + 1], v[:, :, i : i + 1], 0)
    return cache, rk, rv


def test_window_and_pivots_stay_exact_rest_is_quantized():
    torch.manual_seed(0)
    b, h, t, d = 2, 2, 40, 16
    k, v = torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    pivots = torch.zeros(b, t - 3, dtype=torch.bool)
    pivots[0, 5] = pivots[1, 11] = True
    policy = make_policy("akvq", window=8, tsa=False, hp_dtype="model")
    cache, rk, rv = _layer_roundtrip(policy, k, v, pivots=pivots)
    torch.testing.assert_close(rk[:, :, -8:], k[:, :, -8:], rtol=0, atol=0)  # the recent window
    torch.testing.assert_close(rk[0, :, 5], k[0, :, 5], rtol=0, atol=0)  # pivots
    torch.testing.assert_close(rv[1, :, 11], v[1, :, 11], rtol=0, atol=0)
    old = rk[:, :, :32] - k[:, :, :32]
    assert old.abs().max() > 1e-3  # quantized
    assert (old.abs() < 2.0).all()  # but close
    layer = cache.layers[0]
    assert layer.k.n_q == 32 and int((layer.k.cls == FULL).sum()) == 2


@pytest.mark.parametrize("every", [3, 8])
def test_flush_every_keeps_the_window_and_each_tokens_codes(every: int) -> None:
    """`flush_every: N`: the newest `window` tokens stay 16-bit, at most N - 1 older ones wait with them, and
    every token that leaves gets the codes it gets with N = 1 (per-token groups: quantized alone, once)."""
    g = torch.Generator().manual_seed(0)
    b, h, t, d, p, window = 2, 2, 70, 16, 33, 8
    k, v = torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)
    vision = torch.rand(b, p, generator=g) < 0.5
    pivots = torch.rand(b, p, generator=g) < 0.1
    caches, longest = {}, {}
    for n in (1, every):
        policy = make_policy("akvq", window=window, num_pivots=3, layer_pattern=["tsa", "psa"], flush_every=n)
        cache = AKVQCache(policy, 2)
        cache.set_token_roles(vision)
        cache.set_pivots(pivots)
        for i, j in [(0, p), *((i, i + 1) for i in range(p, t))]:
            for layer in (0, 1):
                cache.update(k[:, :, i:j], v[:, :, i:j], layer)
            for layer in cache.layers:
                for store in (layer.k, layer.v):
                    assert store.n_q + store.tail_len == j
                    if j > p:  # quantizing is deferred: the prefill's tokens leave on the first step
                        assert window <= store.tail_len < window + n, (n, j, store.tail_len)
                        longest[n] = max(longest.get(n, 0), store.tail_len)
        caches[n] = cache
    assert longest == {1: window, every: window + every - 1}  # the chunked window does wait
    moved = 0
    for exact, chunked in zip(caches[1].layers, caches[every].layers, strict=True):
        for a, c in ((exact.k, chunked.k), (exact.v, chunked.v)):
            rows = c.n_q * b
            moved += c.n_q
            assert torch.equal(a.cls[:rows], c.cls)
            for cls, q in c.tables.items():
                n = q.codes.shape[0]
                for name in ("codes", "scale", "zero"):
                    assert torch.equal(getattr(a.tables[cls], name)[:n], getattr(q, name)), (cls, name)
            if c.hp_rows is not None:
                assert torch.equal(a.hp_rows[: c.hp_rows.shape[0]], c.hp_rows)
    assert moved > 4 * (t - window - every)  # most tokens did leave the window in both caches
    with pytest.raises(ConfigError, match="flush_every"):
        make_policy("akvq", flush_every=0)


def test_tokens_are_quantized_once():
    torch.manual_seed(0)
    k, v = torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16)
    cache = AKVQCache(make_policy("rtn2", bits=2, window=4), 1)
    cache.update(k[:, :, :20], v[:, :, :20], 0)
    cache.update(k[:, :, 20:21], v[:, :, 20:21], 0)
    codes_before = cache.layers[0].k.tables[LOW].codes.clone()
    first = cache.layers[0].k.n_q
    for i in range(21, 30):
        cache.update(k[:, :, i : i + 1], v[:, :, i : i + 1], 0)
    store = cache.layers[0].k
    assert store.n_q == first + 9 and store.tail_len == 4
    assert torch.equal(store.tables[LOW].codes[: codes_before.shape[0]], codes_before)


@pytest.mark.parametrize("name", ["rtn", "kivi", "skvq", "smoothquant", "akvq"])
def test_final_report_counts_a_prefill_only_cache_in_the_methods_format(name):
    """A generation that ends on its prefill token (EOS first) runs no decode update, so the deferred flush never
    ran: `final_report` quantizes what left the window, as the next step would have, and counts that."""
    torch.manual_seed(0)
    k, v = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    policy = make_policy(name, **SMALL[name])
    stepped, _, _ = _layer_roundtrip(policy, k, v, steps=1)  # prefill 39 + one decode token
    prefill_only = AKVQCache(policy, 1)
    with (
        torch.inference_mode()
    ):  # as `api.generate` fills it; the report below runs outside, as tasks call it
        prefill_only.update(k, v, 0)  # the same 40 tokens in one prefill
    assert prefill_only.memory_report().effective_bits == pytest.approx(16.0, abs=0.01)
    report = api.final_report(prefill_only)
    assert report.effective_bits < 8
    # the same bytes as the cache that took a decode step (settled too: with no window, rtn's last token waits)
    assert report.total_bytes == api.final_report(stepped).total_bytes == storage_bytes(prefill_only)
    assert api.final_report(prefill_only).total_bytes == report.total_bytes  # settling twice moves nothing


def test_final_report_settles_a_cache_filled_in_inference_mode():
    """`generate` fills the cache under inference mode; tasks report outside it, and the settling flush appends to
    tables allocated in there (an in-place write into inference tensors, refused outside inference mode)."""
    torch.manual_seed(0)
    k, v = torch.randn(1, 2, 41, 16), torch.randn(1, 2, 41, 16)
    cache = AKVQCache(make_policy("akvq", window=8, num_pivots=0), 1)
    with torch.inference_mode():
        cache.update(k[:, :, :20], v[:, :, :20], 0)
        cache.update(k[:, :, 20:21], v[:, :, 20:21], 0)  # a decode step: the tables exist from here
        cache.update(k[:, :, 21:], v[:, :, 21:], 0)  # 20 more at once: 12 of them past the window, unflushed
    assert cache.layers[0].k.tail_len == 20
    report = api.final_report(cache)
    assert cache.layers[0].k.tail_len == 8 and cache.layers[0].k.n_q == 33
    assert report.effective_bits < 8


@pytest.mark.parametrize("name", ["rtn", "kivi", "skvq", "smoothquant", "akvq"])
def test_quantized_read_matches_reference_math(name):
    """What the cache returns equals quantize->dequantize of the same rows, token order kept."""
    from akvq.quant import dequantize, fwht, quantize

    torch.manual_seed(1)
    b, h, t, d = 2, 2, 70, 16
    k, v = torch.randn(b, h, t, d), torch.randn(b, h, t, d) * 3
    overrides = {
        "rtn": {},
        "kivi": {"residual": 16},
        "skvq": {"sink": 0, "window": 8},
        "smoothquant": {},
        "akvq": {"tsa": False, "psa": False, "window": 8},
    }[name]
    policy = make_policy({"policy": name}, hp_dtype="model", **overrides)
    cache, rk, _ = _layer_roundtrip(policy, k, v, steps=2)
    store = cache.layers[0].k
    n = store.n_q
    x = k[:, :, :n].permute(2, 0, 1, 3).reshape(n * b, h * d)
    plan = store.plan
    if plan.hadamard:
        x = fwht(x.view(-1, h, d)).view(-1, h * d)
    if store.smooth is not None:
        x = (x.view(n, b, -1) / store.smooth.float()).view(-1, h * d)
    if plan.axis == "channel":
        xt = x.view(n, b, -1).permute(1, 2, 0)
        ref = dequantize(quantize(xt, plan.bits, plan.group_size, 1.0, float_zero=plan.float_zero))
        ref = ref.permute(2, 0, 1).reshape(n * b, -1)
    else:
        ref = dequantize(
            quantize(
                x,
                plan.bits,
                store.group,
                plan.clip_for(plan.bits),
                plan.clip_search,
                plan.float_zero,
                plan.clip_mode,
            )
        )
    if store.smooth is not None:
        ref = (ref.view(n, b, -1) * store.smooth.float()).view(-1, h * d)
    if plan.hadamard:
        ref = fwht(ref.view(-1, h, d)).view(-1, h * d)
    ref = ref.view(n, b, h, d).permute(1, 2, 0, 3)
    torch.testing.assert_close(rk[:, :, :n], ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rk[:, :, n:], k[:, :, n:], rtol=0, atol=0)


def test_tsa_text_4bit_vision_2bit():
    torch.manual_seed(0)
    b, h, t, d = 1, 2, 50, 16
    k, v = torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    vision = torch.zeros(b, t - 1, dtype=torch.bool)
    vision[:, 10:30] = True
    policy = make_policy("akvq", window=8, layer_pattern=["tsa"])
    cache, _, _ = _layer_roundtrip(policy, k, v, steps=1, token_roles=vision)
    store = cache.layers[0].k
    assert store.tables[TEXT].bits == 4 and store.tables[LOW].bits == 2
    assert store.tables[LOW].codes.shape[0] == 20  # the vision tokens
    assert store.tables[TEXT].codes.shape[0] == store.n_q - 20
    assert int((store.cls == TEXT).sum()) == store.n_q - 20


def test_two_bit_payload_is_an_eighth_of_fp16():
    k = torch.randn(1, 2, 300, 64)
    cache, _, _ = _layer_roundtrip(make_policy("rtn2", bits=2, window=0), k, k.clone(), steps=1)
    store = cache.layers[0].k
    assert store.tables[LOW].codes.nbytes * 8 == store.n_q * 2 * 64 * 2


def test_kivi_keys_flush_in_residual_groups():
    k = torch.randn(1, 2, 100, 16)
    cache, _, _ = _layer_roundtrip(make_policy("kivi2", residual=32), k, k.clone(), steps=5)
    layer = cache.layers[0]
    assert layer.k.n_q % 32 == 0 and 0 < layer.k.tail_len <= 32 + 1
    assert layer.v.tail_len == 32  # values keep a sliding residual


def test_bad_configs_fail_before_any_model_loads():
    with pytest.raises(ConfigError, match="bits"):
        make_policy("akvq", bits=5)
    with pytest.raises(ConfigError, match="text_bits"):
        make_policy("akvq", text_bits=6)
    with pytest.raises(ConfigError, match="unknown quant config .gptq.; available: akvq"):
        make_policy("gptq")
    with pytest.raises(ConfigError, match="no field"):
        make_policy("kivi2", window=3)
    with pytest.raises(ConfigError, match="group_size"):
        make_policy("rtn2", group_size=48).check_model(num_kv_heads=2, head_dim=64, num_layers=2)
    with pytest.raises(ConfigError, match="power-of-two"):
        make_policy("akvq").check_model(num_kv_heads=2, head_dim=80, num_layers=2)
    with pytest.raises(ConfigError, match="layer_pattern"):
        make_policy("akvq", layer_pattern=["tsa", "xsa"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(SMALL))
def test_beams_and_several_sequences_per_prompt(family, name):
    """generate expands the batch after the cache got the prompt's masks (crashed for TSA roles and SKVQ sinks)
    and reorders it every beam step (raised for packed rows): both now gather rows, losslessly."""
    loaded, inputs = tiny_inputs(family)
    policy = make_policy(name, **SMALL[name])
    n = inputs["input_ids"].shape[1]
    torch.manual_seed(0)
    out, cache = api.generate(
        loaded.model, inputs, policy, max_new_tokens=4, do_sample=True, num_return_sequences=3
    )
    assert out.shape == (6, n + 4) and cache.layers[0].k.batch == 6
    assert torch.equal(out[:3, :n], inputs["input_ids"][:1].expand(3, -1))
    out, cache = api.generate(
        loaded.model,
        inputs,
        make_policy(name, **SMALL[name]),
        max_new_tokens=4,
        do_sample=False,
        num_beams=3,
        num_return_sequences=2,
    )
    assert out.shape[0] == 4 and cache.memory_report().total_bytes == storage_bytes(cache)


def test_fp16_beam_search_identical_to_dynamic_cache():
    loaded, inputs = tiny_inputs("llava")
    kw = dict(max_new_tokens=8, do_sample=False, num_beams=3)
    model = loaded.model
    ref = model.generate(**inputs, **{api.cache_kwarg(): DynamicCache(config=model.config)}, **kw)
    out, _ = api.generate(model, inputs, make_policy("fp16", hp_dtype="model"), **kw)
    assert torch.equal(out, ref)


SELECT = {
    "akvq_tsa": ("akvq", {"window": 4, "layer_pattern": ["tsa"]}),
    "akvq_psa_channel": (
        "akvq",
        {"window": 4, "tsa": False, "k_axis": "channel", "k_window": 0, "k_group_tokens": 8},
    ),
    "skvq": ("skvq", {"window": 4, "sink": 2}),
    "smoothquant": ("smoothquant", {}),
    "kivi": ("kivi", {"residual": 8}),
    "akvq_psa_channel_w8": (
        "akvq",
        {
            "window": 4,
            "tsa": False,
            "k_axis": "channel",
            "k_window": 0,
            "k_group_tokens": 8,
            "window_bits": 8,
        },
    ),
}


@pytest.mark.parametrize("key", sorted(SELECT))
def test_select_batch_gathers_every_row_exactly(key):
    """Gathering batch rows (any order, repeats) returns exactly those rows of what the cache held, and the
    cache keeps working after it."""
    name, kw = SELECT[key]
    torch.manual_seed(0)
    b, h, t, d = 3, 2, 37, 16
    k, v = torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    vision = torch.rand(b, t - 3) < 0.5
    pivots = torch.zeros(b, t - 3, dtype=torch.bool)
    pivots[0, 5] = pivots[1, 11] = pivots[2, 2] = True
    attention = torch.ones(b, t - 3, dtype=torch.bool)
    attention[1, :4] = False
    cache, _, _ = _layer_roundtrip(
        make_policy(name, hp_dtype="model", **kw),
        k,
        v,
        token_roles=vision,
        pivots=pivots,
        attention_mask=attention,
    )
    layer = cache.layers[0]
    before = layer.k.materialize(torch.float32), layer.v.materialize(torch.float32)
    idx = torch.tensor([2, 0, 0, 1])
    cache.select_batch(idx)
    after = layer.k.materialize(torch.float32), layer.v.materialize(torch.float32)
    for x, y in zip(before, after):
        torch.testing.assert_close(y, x[idx], rtol=0, atol=0)
    assert torch.equal(cache.pivot_mask, pivots[idx]) and cache.memory_report().total_bytes == storage_bytes(
        cache
    )
    rk, _ = cache.update(torch.randn(4, h, 1, d), torch.randn(4, h, 1, d), 0)  # flushes gathered rows further
    assert rk.shape == (4, h, t + 1, d) and torch.isfinite(rk).all()


def test_llava_next_generates_with_akvq():
    loaded, inputs = tiny_inputs("llava_next")
    out, cache = api.generate(
        loaded.model, inputs, make_policy("akvq", window=8), max_new_tokens=5, do_sample=False
    )
    assert cache.get_seq_length() == out.shape[1] - 1
    assert tiny("llava_next").family == "llava_next"


@pytest.mark.parametrize("name", ["rtn", "kivi", "skvq", "smoothquant", "akvq"])
def test_cached_read_path_is_numerically_identical(name):
    torch.manual_seed(2)
    k, v = torch.randn(2, 2, 90, 16), torch.randn(2, 2, 90, 16)
    pivots = torch.rand(2, 80) > 0.9
    vision = torch.rand(2, 80) > 0.5
    overrides = {
        "kivi": {"residual": 16},
        "skvq": {"window": 8},
        "akvq": {"window": 8, "layer_pattern": ["tsa"]},
    }
    outs = []
    for path in ("dequantize", "cached"):
        cache = AKVQCache(make_policy({"policy": name}, **overrides.get(name, {})), 1, read_path=path)
        cache.set_pivots(pivots)
        cache.set_token_roles(vision)
        cache.update(k[:, :, :80], v[:, :, :80], 0)
        for i in range(80, 90):
            rk, rv = cache.update(k[:, :, i : i + 1], v[:, :, i : i + 1], 0)
        outs.append((rk, rv, cache.memory_report().total_bytes))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2]


def test_skvq_channel_reordering_inverts_exactly():
    """8-bit codes make quantization error tiny, so any slip in the channel permutation shows."""
    torch.manual_seed(3)
    k = torch.randn(2, 4, 40, 16) * torch.linspace(0.1, 20, 16)
    policy = make_policy("skvq", bits=8, group_size=16, window=4, sink=0, clip_search=False, clip_ratio=1.0)
    cache, rk, _ = _layer_roundtrip(policy, k, k.clone(), steps=2)
    store = cache.layers[0].k
    assert store.perm is not None and sorted(store.perm.tolist()) == list(range(64))
    torch.testing.assert_close(rk, k, rtol=0, atol=0.5)  # half an 8-bit step of the widest group


def test_packed_reads_fall_back_for_layouts_the_kernel_does_not_fold():
    """SKVQ's channel permutation is folded by no fast path: its layers hand attention real K/V."""
    k = torch.randn(1, 2, 40, 16)
    for name, kw, packable in [("rtn", {}, True), ("akvq", {"float_zero": True}, True), ("skvq", {}, False)]:
        cache = AKVQCache(make_policy({"policy": name}, window=4, **kw), 1)
        cache.packed_reads = True
        cache.update(k[:, :, :30], k[:, :, :30], 0)
        rk, _ = cache.update(k[:, :, 30:31], k[:, :, 30:31], 0)
        assert hasattr(rk, "akvq_store") == packable
        if not packable:
            assert torch.isfinite(rk).all()


def test_akvq_reads_roles_pivots_and_pattern_with_no_manual_steps():
    """generate() on a tiny LLaVA: TSA layers hold text at 4-bit and vision at 2-bit, PSA layers hold pivots
    at 16-bit; roles come from the processor's image tokens, pivots from the prefill, the pattern from
    configs/layer_patterns/tiny-llava.yaml (TSA 0-1, PSA 2-3)."""
    from akvq.saliency.roles import vision_mask

    loaded, inputs = tiny_inputs("llava")
    policy = make_policy("akvq", window=8, num_pivots=3)
    out, cache = api.generate(loaded.model, inputs, policy, max_new_tokens=4, do_sample=False)
    assert policy.layer_pattern is None  # the caller's policy is a value: resolving made a copy
    assert cache.policy.layer_pattern[:2] == ["tsa", "tsa"] and cache.policy.layer_pattern[2] == "psa"
    vision = vision_mask(loaded.model, inputs)
    assert torch.equal(cache.vision_mask, vision) and vision.any()
    tsa, psa = cache.layers[0].k, cache.layers[2].k
    n = tsa.n_q
    quantized_vision = int(vision[:, :n].sum())
    assert tsa.tables[TEXT].bits == 4 and tsa.tables[LOW].bits == 2
    assert tsa.tables[LOW].codes.shape[0] == quantized_vision
    assert tsa.tables[TEXT].codes.shape[0] == n * 2 - quantized_vision
    assert cache.pivot_mask.sum(-1).tolist() == [3, 3]
    assert int((psa.cls == FULL).sum()) == int(cache.pivot_mask[:, :n].sum())
    # and the bytes say so: the TSA layer's text rows cost 4-bit codes
    r = cache.layers[0].nbytes()
    assert r.codes == sum(
        t.codes.nbytes for s in (cache.layers[0].k, cache.layers[0].v) for t in s.tables.values()
    )


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_append_grows_in_place_like_cat(dim: int) -> None:
    """`_append` equals torch.cat, and appends within the reserve write into the same buffer (no copy)."""
    from akvq.cache.store import _append

    g = torch.Generator().manual_seed(0)
    parts = [torch.randint(0, 255, (3, 5, 7), generator=g, dtype=torch.uint8) for _ in range(40)]
    ref, out, moves = None, None, 0
    for x in parts:
        x = x.transpose(0, dim).contiguous()
        before = None if out is None else out.data_ptr()
        out = _append(out, x, dim)
        ref = x if ref is None else torch.cat([ref, x], dim)
        moves += before is not None and out.data_ptr() != before
        assert torch.equal(out, ref)
    assert moves <= 3  # a reserve of >= 64 units: a handful of reallocations over 40 appends


def test_sliding_tail_moves_into_its_reserve() -> None:
    """A window that loses its oldest token and gains a new one per step (a quantized cache's tail) slides through
    its buffer: the same values as cutting and concatenating, one reallocation every SLIDE_RESERVE steps."""
    from akvq.cache.store import SLIDE_RESERVE, _append

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 3, 16, 4, generator=g)
    tail, moves, steps = _append(None, ref, dim=-2), 0, 5 * SLIDE_RESERVE
    for _ in range(steps):
        x = torch.randn(2, 3, 1, 4, generator=g)
        ref = torch.cat([ref[:, :, 1:], x], -2)
        buf = tail.untyped_storage().data_ptr()
        tail = _append(tail[:, :, 1:], x, dim=-2)
        moves += tail.untyped_storage().data_ptr() != buf
        assert torch.equal(tail, ref)
    assert moves <= steps // SLIDE_RESERVE + 1


@pytest.mark.parametrize("dim", [0, -2])
def test_noted_room_is_the_buffers_room(dim: int) -> None:
    """`_append` and `_drop_front` note a view's room past its start instead of working it out from strides and
    storage on every call; the note must be what that working-out gives for the same view."""
    from akvq.cache.store import _append, _capacity, _drop_front

    g = torch.Generator().manual_seed(0)
    d = dim % 4
    out, checked = None, 0
    for i in range(120):
        x = torch.randn(2, 3, 1, 4, generator=g).transpose(0, d).contiguous()
        out = _append(out, x, dim)
        if d and i % 2:  # a sliding tail: the oldest token leaves
            out = _drop_front(out, d, 1)
        bare = out.as_strided(out.shape, out.stride(), out.storage_offset())  # the same view, no note
        assert not hasattr(bare, "_akvq_room")
        assert _capacity(out, d) == _capacity(bare, d)
        checked += _capacity(out, d) > out.shape[d]
    assert checked  # some views had room to spare: the note was used, not just equal to the length


@pytest.mark.parametrize("name", ["rtn", "kivi", "akvq"])
def test_large_fp32_values_never_become_inf(name):
    """An fp32 model's 16-bit window (hp_dtype auto = fp16) and fp16 scales turned 1e5 into inf; the store
    widens to fp32 where needed and counts it."""
    torch.manual_seed(0)
    k = torch.randn(1, 2, 40, 16) * 1e5
    v = 1000 + 1e-3 * torch.randn(1, 2, 40, 16)
    policy = make_policy(
        name,
        **{
            "rtn": {"window": 4},
            "kivi": {"residual": 8},
            "akvq": {"window": 4, "tsa": False, "num_pivots": 0},
        }[name],
    )
    cache, rk, rv = _layer_roundtrip(policy, k, v)
    assert torch.isfinite(rk).all() and torch.isfinite(rv).all()
    torch.testing.assert_close(rk[:, :, -4:], k[:, :, -4:], rtol=0, atol=0)  # the window: exact, not inf
    if name != "akvq":  # (the WHT turns the offset into one large channel: no small error to check there)
        assert (rv - v).abs().max() < 0.01  # the offset survives (fp16 metadata lost it entirely)
    assert cache.layers[0].k.tail.dtype == torch.float32
    assert cache.memory_report().total_bytes == storage_bytes(cache)


def test_large_bf16_values_never_become_inf():
    """A bf16 model's keys past fp16's range (bf16 reaches 3e38): the fp16 window widens to bf16, exact there."""
    torch.manual_seed(0)
    k = (torch.randn(1, 2, 40, 16) * 1e5).bfloat16()
    v = torch.randn(1, 2, 40, 16).bfloat16()
    policy = make_policy("akvq", window=4, tsa=False, num_pivots=0, hp_dtype="float16")  # as the benchmarks
    cache, rk, rv = _layer_roundtrip(policy, k, v)
    assert torch.isfinite(rk.float()).all() and torch.isfinite(rv.float()).all()
    assert torch.equal(rk[:, :, -4:].float(), k[:, :, -4:].float())
    assert cache.layers[0].k.tail.dtype == torch.bfloat16
    assert cache.memory_report().total_bytes == storage_bytes(cache)


def test_pivot_stands_in_with_its_own_channel_group():
    """akvq_plus keys per channel: a 16-bit pivot's slot in the codes took the mean of the whole flush (four
    groups here), stretching its own group; it must take its own group's mean."""
    torch.manual_seed(0)
    t = torch.arange(35, dtype=torch.float32).view(1, 1, 35, 1)
    k = (t + 0.1 * torch.randn(1, 2, 35, 16)).contiguous()  # channels drift: groups of 8 tokens differ
    pivots = torch.zeros(1, 32, dtype=torch.bool)
    pivots[0, 2] = True
    policy = make_policy(
        "akvq",
        tsa=False,
        hadamard=False,
        k_axis="channel",
        k_window=0,
        k_group_tokens=8,
        window=4,
        clip_ratio=1.0,
        hp_dtype="model",
    )
    cache, rk, _ = _layer_roundtrip(policy, k, k.clone(), pivots=pivots)
    assert cache.layers[0].k.n_q == 32
    torch.testing.assert_close(rk[0, :, 2], k[0, :, 2], rtol=0, atol=0)  # the pivot itself is exact
    own = torch.cat([k[:, :, :2], k[:, :, 3:8]], dim=2)  # group 0 without the pivot
    step = (own.amax(2) - own.amin(2)) / 3
    err = torch.cat([rk[:, :, :2] - k[:, :, :2], rk[:, :, 3:8] - k[:, :, 3:8]], dim=2).abs().amax(2)
    assert (err <= step * 0.5 + 1e-3).all()


@pytest.mark.parametrize("name", ["kivi", "smoothquant"])
def test_left_padding_stays_out_of_shared_statistics(name):
    """KIVI's per-channel key groups (and SmoothQuant's calibration) took pad tokens into their statistics, so a
    padded row read back differently from the same row alone (by up to 2.0 in the audit)."""
    torch.manual_seed(0)
    b, h, t, d, pads = 2, 2, 43, 16, 3
    k = torch.randn(b, h, t, d)
    k[0, :, :pads] = 50 * torch.randn(h, pads, d)  # what a pad token's key may look like
    attention = torch.ones(b, t - 3, dtype=torch.bool)
    attention[0, :pads] = False
    kw = {"kivi": {"residual": 8}, "smoothquant": {"window": 4}}[name]
    padded, rk, _ = _layer_roundtrip(
        make_policy(name, hp_dtype="model", **kw), k, k.clone(), attention_mask=attention
    )
    n = padded.layers[0].k.n_q
    if name == "kivi":  # every real token within half a step of its group's range over real tokens only
        real = k[0, :, :n].clone()
        real[:, :pads] = float("nan")
        grp = real.view(h, n // 8, 8, d)
        step = (grp.nan_to_num(-1e9).amax(2) - grp.nan_to_num(1e9).amin(2)) / 3
        err = (rk[0, :, :n] - k[0, :, :n]).view(h, n // 8, 8, d)[:, :, :, :]
        err[:, 0, :pads] = 0
        assert (err.abs() <= step.unsqueeze(2) / 2 + 1e-4).all()
    else:  # the padded row's smoothing scales equal those of the row alone
        alone, _, _ = _layer_roundtrip(
            make_policy(name, hp_dtype="model", **kw), k[:1, :, pads:], k[:1, :, pads:]
        )
        torch.testing.assert_close(padded.layers[0].k.smooth[0], alone.layers[0].k.smooth[0], rtol=0, atol=0)


def test_token_lookup_grows_with_the_flushes_and_is_counted():
    """The Triton kernels' token -> (class, class-table index) lookup: extended per flush (not rebuilt), equal to a
    one-shot count over the rows in the store's order, and part of memory_report."""
    torch.manual_seed(0)
    k = torch.randn(2, 2, 40, 16)
    pivots = torch.rand(2, 37) < 0.2
    cache = AKVQCache(make_policy("akvq", window=4, layer_pattern=["tsa"], hp_dtype="model"), 1)
    cache.set_token_roles(torch.rand(2, 37) < 0.5)
    cache.set_pivots(pivots)
    for i in range(0, 40, 7):
        cache.update(k[:, :, i : i + 7], k[:, :, i : i + 7], 0)
        store = cache.layers[0].k
        if not store.n_q:
            continue
        tc, idx = store.token_lookup()
        cls = store.cls.long()
        ref = (torch.nn.functional.one_hot(cls, 3).cumsum(0) - 1).gather(1, cls.unsqueeze(1)).squeeze(1)
        rows = token_rows(0, store.n_q, store.batch, store.sealed).reshape(-1)
        assert torch.equal(idx, ref[rows]) and torch.equal(tc, store.cls[rows])
    assert cache.memory_report().total_bytes == storage_bytes(cache)


def test_token_lookup_is_extended_by_each_flush_across_seals() -> None:
    """Once the Triton lookup exists, each flush extends it from the host (the new rows' classes and their places at
    the ends of the class tables) instead of `table_slots` over the new tokens on every decode step; a seal reorders
    its block's rows, so the block is looked up again once. One token a step across two seals, with text, low and
    16-bit rows mixed: the lookup always equals `table_slots` of every token."""
    g = torch.Generator().manual_seed(3)
    b, n = 3, 150
    x = torch.randn(b, 2, n, 16, generator=g)
    cls = torch.randint(0, 2, (n, b), generator=g).to(torch.uint8)
    cls[torch.rand(n, b, generator=g) < 0.05] = FULL
    st = TensorStore(TensorPlan(bits=2, group_size=16, window=4), 4, torch.float16, 2, 16, b)
    calls: list[tuple[int, int]] = []
    slots = st.table_slots
    st.table_slots = lambda t0, t1: calls.append((t0, t1)) or slots(t0, t1)  # type: ignore[method-assign]
    for i in range(n):
        st.append(x[:, :, i : i + 1])
        m = st.flushable(0)
        if m:
            st.flush(m, cls[st.n_q : st.n_q + m])
            tc, ts = st.token_lookup()
            want_c, want_s = slots(0, st.n_q)
            assert torch.equal(tc.view(-1, b), want_c) and torch.equal(ts.view(-1, b), want_s), st.n_q
    assert st.sealed == 2 * ROW_BLOCK
    assert calls == [(0, 1), (0, ROW_BLOCK), (ROW_BLOCK, 2 * ROW_BLOCK)]  # the first, then each sealed block


def _sealed_store(every: int, n: int = 203, b: int = 3) -> TensorStore:
    """A 2-bit store of n tokens (4-bit text rows, 16-bit pivots), flushed `every` tokens at a time."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b, 2, n, 16, generator=g)
    cls = torch.randint(0, 2, (n, b), generator=g).to(torch.uint8)
    cls[torch.rand(n, b, generator=g) < 0.05] = FULL
    st = TensorStore(TensorPlan(bits=2, group_size=16, window=4), 4, torch.float16, 2, 16, b)
    for i in range(0, n, every):
        st.append(x[:, :, i : i + every])
        m = st.flushable(0)
        if m:
            st.flush(m, cls[st.n_q : st.n_q + m])
    return st


def _token_rows_of(st: TensorStore) -> dict[int, torch.Tensor]:
    """Each class's rows (codes, then scale and zero as bytes) in token order, read through `table_slots`."""
    cls, slot = (x.reshape(-1) for x in st.table_slots(0, st.n_q))
    out = {FULL: st.hp_rows[slot[cls == FULL]]}
    for c, q in st.tables.items():
        i = slot[cls == c]
        out[c] = torch.cat([q.codes[i], q.scale[i].view(torch.uint8), q.zero[i].view(torch.uint8)], 1)
    return out


def test_sealed_blocks_keep_every_tokens_row() -> None:
    """The packed rows' order (`token_rows`): full blocks of ROW_BLOCK tokens sealed sequence by sequence, the rest
    token-major. Flushing one token at a time (a decode step's flush, sealing a block every ROW_BLOCK steps) keeps
    each token's codes, scales and class where one flush of all of them puts them, and every reader (dequantize,
    the Triton lookup, select_batch, a saved cache, also one saved token-major before this order) finds them."""
    one, all_ = _sealed_store(1), _sealed_store(203)
    assert one.n_q == all_.n_q == 199 and one.sealed == all_.sealed == 3 * ROW_BLOCK
    b = one.batch
    rows = token_rows(0, one.n_q, b, one.sealed)
    assert torch.equal(rows.reshape(-1).sort().values, torch.arange(one.n_q * b))  # a bijection onto the rows
    assert torch.equal(
        rows[ROW_BLOCK : 2 * ROW_BLOCK, 1], ROW_BLOCK * b + ROW_BLOCK + torch.arange(ROW_BLOCK)
    )
    assert torch.equal(rows[one.sealed :, 0], torch.arange(one.sealed, one.n_q) * b)
    for st in (one, all_):
        assert torch.equal(st.cls[rows], one.table_slots(0, one.n_q)[0])
    a, c = _token_rows_of(one), _token_rows_of(all_)
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    ref = one.dequantize(one.n_q, torch.float32)
    assert torch.equal(ref, all_.dequantize(all_.n_q, torch.float32))
    assert torch.equal(one.dequantize(70, torch.float32), ref[:, :, -70:])
    tc, ts = one.token_lookup()
    assert torch.equal(tc.view(-1, b), one.table_slots(0, one.n_q)[0])
    # a saved cache, and one saved token-major (no `sealed`): rows moved back to t * B + b, each table in that order
    state = memory._store_state(one)
    assert torch.equal(memory._store_from(state, one.plan).dequantize(one.n_q, torch.float32), ref)
    old = dict(state, cls=one.cls[rows.reshape(-1)].clone(), tables={})
    cls, slot = (x.reshape(-1) for x in one.table_slots(0, one.n_q))
    for k, q in one.tables.items():
        i = slot[cls == k]
        old["tables"][str(k)] = memory._q_state(
            QTensor(q.codes[i], q.scale[i], q.zero[i], q.bits, q.group_size, q.n)
        )
    old["hp_rows"] = one.hp_rows[slot[cls == FULL]]
    del old["sealed"], old["row_block"]
    assert torch.equal(memory._store_from(old, one.plan).dequantize(one.n_q, torch.float32), ref)
    idx = torch.tensor([2, 0, 0, 1])
    one.select_batch(idx)
    assert torch.equal(one.dequantize(one.n_q, torch.float32), ref[idx])
    one.append(torch.randn(4, 2, 61, 16))  # flushes into the next block, and seals it
    one.flush(one.flushable(0), torch.zeros(61, 4, dtype=torch.uint8))
    assert one.sealed == 4 * ROW_BLOCK and torch.equal(
        one.dequantize(one.n_q, torch.float32)[:, :, :199], ref[idx]
    )
    assert torch.equal(one.token_lookup()[1].view(-1, 4), one.table_slots(0, one.n_q)[1])


def test_high_positions_follow_every_change_of_the_16bit_rows() -> None:
    """`TensorStore.high_positions` (cached between decode steps) names the (sequence, token) each 16-bit row came
    from, after flushes that add 16-bit rows, seals that reorder them (150 tokens: two blocks) and a batch reorder;
    and `table_slots` from a suffix of tokens agrees with the same slots read from all of them."""
    from akvq.policies.base import TensorPlan

    g = torch.Generator().manual_seed(0)
    b, h, d = 3, 2, 16
    st = TensorStore(TensorPlan(bits=2, group_size=16, window=4), 4, torch.float16, h, d, b)
    x = torch.randn(b, h, 150, d, generator=g).half()

    def check(st: TensorStore, x: torch.Tensor) -> None:
        bi, ti = st.high_positions()
        assert bi.numel() == st.hp_rows.shape[0] > 0
        want = x[bi, :, ti, :].reshape(bi.numel(), -1)
        assert torch.equal(st.hp_rows, want)
        cls_all, slot_all = st.table_slots(0, st.n_q)
        for t0 in (st.n_q - 1, st.sealed - 1, st.sealed, 70):
            if 0 <= t0 < st.n_q:
                cls, slot = st.table_slots(t0, st.n_q)
                assert torch.equal(cls, cls_all[t0:]) and torch.equal(slot, slot_all[t0:])

    done = 0
    for n in (40, 1, 1, 30, 1, 50, 27):
        m = st.flushable(n)
        if m:
            cls = torch.randint(0, 2, (m, b), generator=g).to(torch.uint8)
            if st.n_q < 40:  # 16-bit rows early only: the seal at 64 then reorders them on its own
                cls[torch.rand(m, b, generator=g) < 0.15] = FULL
            st.flush(m, cls)
            check(st, x)
        st.append(x[:, :, done : done + n])
        done += n
    assert done == 150 and st.sealed == 64 and st.n_q > 64
    idx = torch.tensor([2, 0, 0, 1])
    st.select_batch(idx)
    check(st, x[idx])
