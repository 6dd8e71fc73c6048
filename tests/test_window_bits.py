"""`window_bits: 8`: the recent window stored as int8 codes with an fp16 scale per 32 channels (q8_0-style).

What must hold: a token is quantized to 8 bits once, on entering the window; it leaves the window quantized from
those 8-bit values (so an 8-bit store equals a 16-bit store fed the 8-bit-dequantized tokens); every reader sees
values, never the int8 layout; the bytes counted are the bytes held; the default (16) is unchanged."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from akvq.cache.store import FULL, LOW, TensorStore
from akvq.errors import ConfigError
from akvq.policies import make_policy
from akvq.policies.base import TensorPlan
from akvq.quant.q8 import dequantize_q8, quantize_q8

B, H = 2, 3


def _fill(plan: TensorPlan, x: torch.Tensor, steps: int, seed: int = 0) -> TensorStore:
    """x [B, H, T, D]: the first T - steps tokens as one prefill, then one token per step, random classes."""
    g = torch.Generator().manual_seed(seed)
    st = TensorStore(plan, 4, torch.float32, H, x.shape[-1], B)
    t = x.shape[2]
    for part in (x[:, :, : t - steps], *x[:, :, t - steps :].split(1, dim=2)):
        m = st.flushable(part.shape[2])
        if m:
            cls = torch.randint(0, 2, (m, B), generator=g).to(torch.uint8)
            cls[torch.rand(m, B, generator=g) < 0.1] = FULL
            if plan.axis == "channel":
                cls[cls == 1] = LOW
            st.flush(m, cls)
        st.append(part)
    return st


def _values(d: int = 64, t: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, t, d, generator=g) * (1 + 5 * torch.rand(1, 1, 1, d, generator=g))


def test_q8_round_trip_is_within_half_a_step_and_keeps_scales_in_the_row():
    x = _values(64, 40)
    t = quantize_q8(x, 32)
    assert t.dtype == torch.int8 and t.shape == (B, H, 40, 64 + 4)
    codes = t[..., :64]
    assert int(codes.abs().max()) <= 127
    step = t[..., 64:].contiguous().view(torch.float16).float()  # [B, H, 40, 2]
    err = (x - dequantize_q8(t, 64, 32, torch.float32)).unflatten(-1, (2, 32)).abs().amax(-1)
    assert bool((err <= step / 2 * 1.0001 + 1e-6).all())
    # absmax of each group maps to +-127 (the grid's ends), a zero group to zero codes and a zero scale
    x[0, 0, 0] = 0
    t = quantize_q8(x, 32)
    assert (
        int(t[0, 0, 0, :64].abs().max()) == 0
        and float(dequantize_q8(t, 64, 32, torch.float32)[0, 0, 0].abs().max()) == 0
    )
    assert int(t[1, 1, 1, :32].abs().max()) == 127


def test_q8_non_finite_inputs_stay_local():
    x = torch.randn(1, 1, 1, 64)
    x[..., 3], x[..., 4], x[..., 40] = float("nan"), float("inf"), float("-inf")
    y = dequantize_q8(quantize_q8(x, 32), 64, 32, torch.float32)
    assert float(y[..., 3]) == 0 and float(y[..., 4]) > 0 and float(y[..., 40]) < 0
    keep = torch.ones(64, dtype=torch.bool)
    keep[[3, 4, 40]] = False
    assert bool(torch.isfinite(y).all()) and float((y - x)[..., keep].abs().max()) < 0.05


PLANS = {
    "token": TensorPlan(bits=2, group_size=64, window=16, hadamard=True, float_zero=True, clip_search=True),
    "token_across": TensorPlan(bits=2, group_size=128, window=8, group_across_heads=True, float_zero=True),
    "channel": TensorPlan(bits=2, group_size=32, window=0, axis="channel", hadamard=True, float_zero=True),
    "smooth": TensorPlan(bits=4, group_size=32, window=5, smooth_alpha=0.5),
    "reorder": TensorPlan(bits=2, group_size=64, window=6, group_across_heads=True, reorder=True),
}


@pytest.mark.parametrize("name", sorted(PLANS))
@pytest.mark.parametrize("d", [64, 48], ids=["d64", "d48"])  # 48: scales per gcd(32, 48) = 16 channels
def test_an_8bit_window_leaves_as_the_16bit_store_of_its_8bit_values(name: str, d: int):
    """Everything an 8-bit store holds and reads equals a 16-bit store fed the tokens' 8-bit values: the 2-bit
    codes are quantized from the 8-bit-dequantized window, once."""
    plan16 = PLANS[name]
    if plan16.hadamard and d & (d - 1) or d % plan16.row_group(H, d):
        pytest.skip("a layout this head_dim does not take (check_model refuses it)")
    plan8 = dataclasses.replace(plan16, window_bits=8)
    x = _values(d)
    x8 = dequantize_q8(quantize_q8(x, 32 if d % 32 == 0 else 16), d, 32 if d % 32 == 0 else 16, torch.float32)
    s8, s16 = _fill(plan8, x, 40), _fill(plan16, x8, 40)
    assert s8.n_q == s16.n_q > 0 and s8.tail_len == s16.tail_len > 0
    assert s8.tail.dtype == torch.int8 and s16.tail.dtype == torch.float32
    assert torch.equal(s8.window(), s16.window())
    assert torch.equal(s8.materialize(torch.float32), s16.materialize(torch.float32))
    assert s8.window(torch.float16).dtype == torch.float16


@pytest.mark.parametrize("name", sorted(PLANS))
def test_bytes_counted_are_the_bytes_held(name: str):
    plan16 = PLANS[name]
    s8, s16 = _fill(dataclasses.replace(plan16, window_bits=8), _values(), 40), _fill(plan16, _values(), 40)
    n8, n16 = s8.nbytes(), s16.nbytes()
    window = B * H * s8.tail_len
    assert s8.tail.nbytes == window * (64 + 2 * 2)  # int8 codes + two fp16 scales per token and head
    assert n8.codes - n16.codes == window * 64
    assert n8.meta - n16.meta == window * 2 * 2
    assert n16.hp - n8.hp == window * 64 * 4  # the 16-bit store of this test holds fp32 (hp_dtype=float32)
    assert n8.index == n16.index


def test_default_is_the_16bit_window():
    assert TensorPlan().window_bits == 16
    st = TensorStore(TensorPlan(window=4), None, torch.float16, H, 64, B)
    x = _values(64, 6)
    st.append(x)
    assert st.tail.dtype == torch.float16 and st.window() is st.tail
    assert torch.equal(st.materialize(torch.float32), x.half().float())


@pytest.mark.parametrize("name", ["akvq_plus", "akvq", "kivi2", "rtn2", "skvq", "smoothquant"])
def test_window_bits_reaches_every_store_plan(name: str):
    policy = make_policy(name, window_bits=8)
    plan = policy.layer_plan(3, 30)
    assert plan.k.window_bits == plan.v.window_bits == 8
    assert make_policy(name).layer_plan(3, 30).k.window_bits == 16


def test_the_w8_configs_are_akvq_plus_with_an_8bit_window():
    base = make_policy("akvq_plus")
    assert make_policy("akvq_plus_w8") == dataclasses.replace(base, window_bits=8)
    assert make_policy("akvq_plus_w8_w32") == dataclasses.replace(base, window_bits=8, window=32)


@pytest.mark.parametrize("bad", [4, 2, 32, 0, "8"])
def test_bad_window_bits_is_one_config_error(bad):
    with pytest.raises(ConfigError, match=r"window_bits=.* is not supported; choose one of \[16, 8\]"):
        make_policy("akvq_plus", window_bits=bad)
    with pytest.raises(ConfigError, match="window_bits"):
        TensorPlan(window_bits=bad)
