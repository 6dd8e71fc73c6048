"""Host syncs: the decode step's Python must not read values back from the device (`akvq.bench.syncs`).

On a GPU every such read stops the host until the device's queue drains; the first H200 run counted ~316 a step on
LLaVA-7B's 32 layers (the flush's `bincount().tolist()`, boolean-mask writes of the class map, a padding check).
The same Python runs here, so the count is checked on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_triton_interpreter, tiny_inputs

from akvq import api
from akvq.attention import use_packed
from akvq.bench.syncs import HostSyncs
from akvq.cache.layer import AKVQLayer
from akvq.policies import make_policy
from akvq.quant import cpu as quant_cpu

# What a decode step may still read back, and why: fp16 or fp32 scale/zero for the piece just quantized (the torch
# quantizer, the route on a GPU: `uniform.meta_dtype`); an fp32 or bf16 model's values past fp16's range
# (`store._overflows_half`; an fp16 model skips it); and once every ROW_BLOCK tokens, the block being sealed and
# the 16-bit rows' places found again (`store.seal`, `store.high_positions`).
ALLOWED = ("meta_dtype", "_overflows_half", " seal ", " high_positions ")


def test_the_counter_sees_every_read_back() -> None:
    x = torch.rand(4, 3)
    methods = {m: m in vars(torch.Tensor) for m in ("item", "tolist", "__bool__", "__int__", "__float__")}
    for mode in (torch.inference_mode, torch.no_grad):  # inference mode hides item() from dispatch modes
        with mode(), HostSyncs() as s:
            bool(x.all())
            x.sum().item()
            int(x.argmax())
            float(x.max())
            x.tolist()
            torch.nonzero(x)
            x[x > 0.5]
            y = x.clone()
            y[x > 0.5] = 0.0
            torch.bincount(torch.tensor([0, 2]))
            x.masked_fill(x > 0.5, 0.0)  # no read: not counted
            x.cumsum(0)
        assert s.total == 9, s.by_site
    assert {m: m in vars(torch.Tensor) for m in methods} == methods  # the wrappers are gone again
    assert x.sum().item() == float(x.sum())


def _count_update_syncs(policy: str, steps: int, **kw: object) -> list[list[str]]:
    """Per decode step, the sites of the reads inside the cache's `update` (the flush and the append), on a tiny
    LLaVA with two left-padded prompts (roles from the processor, pivots from the prefill)."""
    loaded, inputs = tiny_inputs("llava")
    model = loaded.model
    pol = make_policy(policy, **kw)
    cache = api.build_cache(model, pol, inputs)
    out: list[list[str]] = []
    counter: list[HostSyncs] = []
    orig = AKVQLayer.update

    def update(self, *a, **k):  # noqa: ANN001, ANN202
        if not counter:
            return orig(self, *a, **k)
        with counter[0]:
            return orig(self, *a, **k)

    kv = api.cache_kwarg()
    AKVQLayer.update = update  # type: ignore[method-assign]
    try:
        with api.pivot_detection(model, cache), torch.inference_mode():
            o = model(**inputs, **{kv: cache}, use_cache=True)
        use_packed(model, cache, "auto")  # decode steps hand the attention packed stand-ins, as on a GPU
        ids = o.logits[:, -1:].argmax(-1)
        mask = inputs["attention_mask"]
        for _ in range(steps):
            counter[:] = [HostSyncs()]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            with torch.inference_mode():
                o = model(input_ids=ids, attention_mask=mask, **{kv: cache}, use_cache=True)
            ids = o.logits[:, -1:].argmax(-1)
            out.append(list(counter[0].by_site.elements()))
    finally:
        AKVQLayer.update = orig  # type: ignore[method-assign]
        use_packed(model, None, "sdpa")  # the session's shared tiny model
    return out


@pytest.mark.parametrize(
    ("policy", "kw"),
    [
        ("akvq", {"window": 8, "num_pivots": 3}),
        ("kivi", {"bits": 2, "residual": 8, "group_size": 32}),
        # sink tokens (SKVQ's channel reordering is read by no packed path: off)
        ("skvq", {"window": 8, "sink": 3, "reorder": False}),
    ],
    ids=["akvq", "kivi2", "skvq_sink"],
)
@pytest.mark.parametrize("quantizer", ["c", "torch"])
def test_decode_steps_read_back_only_what_they_must(
    policy: str, kw: dict, quantizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps that flush prompt tokens (TSA text/vision, pivots, a sink, left padding in the window) and steps
    past the prompt: no read but the allowed ones, with the C quantizer (the CPU's) and the torch one (a GPU's).
    Before the class map and its counts moved to the host: 8-9 reads a layer."""
    if quantizer == "torch":
        monkeypatch.setenv("AKVQ_QUANT_C", "0")
    quant_cpu._lib.cache_clear()
    try:
        steps = _count_update_syncs(policy, 12, **kw)
    finally:
        quant_cpu._lib.cache_clear()
    sites = [s for step in steps for s in step]
    assert sites, "nothing counted: the fp32 model's overflow check reads back on every append"
    bad = [s for s in sites if not any(a in s for a in ALLOWED)]
    assert not bad, bad
    if quantizer == "torch":
        assert [s for s in sites if "meta_dtype" in s], "the torch quantizer picks fp16 metadata on the host"


_TRITON = """
import sys
sys.path.insert(0, {tests!r})
import torch
from test_attention import case
from akvq.attention import packed_triton as PT
from akvq.attention import use_packed
from akvq.bench.syncs import HostSyncs
assert PT.available()
for name in ("akvq_all_classes_nowht", "kivi_keys_hp", "float_zero_across"):
    kst, vst, q, mask = case(name, 3 if name != "kivi_keys_hp" else 1, 150, masked=True)
    PT.packed_decode(q, kst, vst, mask, 0.25)  # builds the lookup and the 16-bit rows' places once
    with HostSyncs() as s:
        PT.packed_decode(q, kst, vst, mask, 0.25)
    assert s.total == 0, (name, dict(s.by_site))
print("SYNCS_OK")
"""


@needs_triton_interpreter
def test_the_triton_path_reads_nothing_back() -> None:
    """The Triton path's Python (q's WHT, the lookup, the 16-bit rows, the tail, softmax) on a decode step after
    the first, in the interpreter (TRITON_INTERPRET=1 must be set before triton is imported: a subprocess)."""
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(tests).parent)}
    p = subprocess.run(
        [sys.executable, "-c", _TRITON.format(tests=tests)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert "SYNCS_OK" in p.stdout, p.stderr[-3000:]
