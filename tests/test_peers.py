"""transformers' QuantizedCache as methods of the harness: defaults, byte accounting against its own tensors,
the memoized read path bit-identical to the stock one, runs through the runner, a clear skip when absent."""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from akvq import api, records, runner
from akvq.errors import ConfigError
from akvq.paths import REPO
from akvq.policies import hf_quantized, make_policy, quant_config

PEERS = {"hf_quanto2": "quanto", "hf_quanto4": "quanto", "hf_hqq2": "hqq", "hf_hqq4": "hqq"}


def need(backend: str) -> None:
    reason = hf_quantized.missing_backend(backend)
    if reason:
        pytest.skip(reason)


def policy_of(name: str, **over: Any):
    return make_policy(name, **over)


def test_yamls_spell_out_transformers_defaults() -> None:
    from transformers.cache_utils import QuantizedLayer

    defaults = {
        k: p.default for k, p in inspect.signature(QuantizedLayer.__init__).parameters.items() if k != "self"
    }
    for name, backend in PEERS.items():
        q = quant_config(name)
        assert q["backend"] == backend and q["nbits"] == int(name[-1])
        assert {k: q[k] for k in defaults if k != "nbits"} == {
            k: v for k, v in defaults.items() if k != "nbits"
        }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "fp8"}, "backend='fp8'"),
        ({"backend": "quanto", "nbits": 3}, "nbits=3"),
        ({"backend": "hqq", "axis_key": -1}, "axis_key=-1"),
    ],
)
def test_bad_fields_name_the_key(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_policy({"policy": "hf_quantized", **fields})


def test_group_must_divide_a_tokens_values() -> None:
    with pytest.raises(ConfigError, match="q_group_size=64 must divide num_kv_heads\\*head_dim=32"):
        policy_of("hf_quanto2").check_model(2, 16, 4)  # tiny-llama: 2 KV heads of 16
    policy_of("hf_quanto2").check_model(3, 64, 30)  # SmolLM2


def _drive(cache: Any, k: torch.Tensor, v: torch.Tensor, prompt: int) -> list[torch.Tensor]:
    outs = [torch.cat(cache.update(k[:, :, :prompt], v[:, :, :prompt], 0), -1)]
    for t in range(prompt, k.shape[2]):
        outs.append(torch.cat(cache.update(k[:, :, t : t + 1], v[:, :, t : t + 1], 0), -1))
    return outs


class _Cfg:
    """Just enough of a model config for QuantizedCache: one full-attention layer."""

    def get_text_config(self, decoder: bool = True) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, hidden_size=64)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_cached_read_path_is_bit_identical_to_transformers(name: str) -> None:
    """Ours (16-bit storage, memoized dequantization) vs transformers' own cache fed the same 16-bit K/V,
    over a prompt and 40 decode steps (five re-quantizations)."""
    need(PEERS[name])
    from transformers.cache_utils import QuantizedCache

    torch.manual_seed(0)
    k, v = torch.randn(2, 2, 70, 32), torch.randn(2, 2, 70, 32)
    pol = policy_of(name, residual_length=8)
    ours = hf_quantized.HFQuantizedCache(pol, 1, "cached")
    fields = {
        f: getattr(pol, f) for f in ("nbits", "axis_key", "axis_value", "q_group_size", "residual_length")
    }
    ref = QuantizedCache(pol.backend, _Cfg(), **fields)
    got = _drive(ours, k, v, 30)
    want = _drive(ref, k.half(), v.half(), 30)
    assert all(g.dtype == torch.float32 for g in got)
    for g, w in zip(got, want):
        assert torch.equal(g, w.float())
    assert (got[-1] - torch.cat([k, v], -1)).abs().max() > 1e-3  # really quantized


@pytest.mark.parametrize("name", sorted(PEERS))
def test_bytes_are_the_tensors_it_holds(name: str) -> None:
    need(PEERS[name])
    torch.manual_seed(0)
    b, h, t, d = 2, 3, 1000, 64
    k, v = torch.randn(b, h, t, d), torch.randn(b, h, t, d)
    pol = policy_of(name)
    cache = hf_quantized.HFQuantizedCache(pol, 1)
    _drive(cache, k, v, 900)
    layer = cache.layers[0]
    held = layer.keys.nbytes + layer.values.nbytes
    for q in (layer._quantized_keys, layer._quantized_values):
        if pol.backend == "hqq":
            codes, meta = q
            held += codes.nbytes + meta["scale"].nbytes + meta["zero"].nbytes
            assert codes.dtype == torch.uint8 and meta["scale"].dtype == torch.float16
        else:
            held += q._data._data.nbytes + q._scale.nbytes + q._shift.nbytes
            assert q._scale.dtype == torch.float16
    rep = cache.memory_report()
    assert rep.total_bytes == held
    assert rep.elements == 2 * b * h * t * d
    residual = layer.keys.shape[2]
    assert 0 < residual < pol.residual_length and rep.hp_bytes == 2 * 2 * b * h * residual * d
    # codes at nbits, a 16-bit scale and zero point per group of 64, the residual at 16 bits
    expect = pol.nbits + 2 * 16 / pol.q_group_size + (16 - pol.nbits - 0.5) * residual / t
    assert rep.effective_bits == pytest.approx(expect, rel=0.02)


def test_generate_on_tiny_llama_counts_bits() -> None:
    need("quanto")
    from conftest import tiny_inputs

    loaded, inputs = tiny_inputs("llama")
    pol = policy_of("hf_quanto2", q_group_size=32, residual_length=8)
    out, cache = api.generate(loaded.model, inputs, pol, max_new_tokens=12, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 12
    assert cache.get_seq_length() == out.shape[1] - 1
    assert 2 < cache.memory_report().effective_bits < 5


def _runner_cfg(tmp_path: Path, *overrides: str) -> Any:
    import warnings

    from hydra import compose, initialize_config_dir

    warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema.*")
    base = ["task.bootstrap=20", f"records={tmp_path / 'runs.jsonl'}", "wandb.mode=disabled", *overrides]
    with initialize_config_dir(config_dir=str(runner.CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=base, return_hydra_config=True)


@pytest.mark.slow
def test_runner_on_tiny_llama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need("quanto")
    need("hqq")
    from conftest import tiny

    session = runner.Session(load_model=lambda model_cfg: tiny("llama"))
    rows = []
    for quant, compare in (("hf_hqq2", "[fp16]"), ("hf_quanto4", "[]")):
        cfg = _runner_cfg(
            tmp_path,
            "model=tiny-llama",
            "task.prompt_len=48",
            "task.cont_len=6",
            "task.windows=2",
            f"quant={quant}",
            f"compare={compare}",
            "quant.q_group_size=32",
            "quant.residual_length=4",
        )
        rows += runner.main(cfg, session)
    assert [r["quant"] for r in rows] == [
        "fp16",
        "hf_hqq2[q_group_size=32,residual_length=4]",
        "hf_quanto4[q_group_size=32,residual_length=4]",
    ]
    assert rows[1]["config"]["quant"]["backend"] == "hqq"
    for r in rows[1:]:
        assert math.isfinite(r["metrics"]["ppl"]) and 2 < r["kv_effective_bits"] < 16
    assert rows[2]["kv_effective_bits"] > rows[1]["kv_effective_bits"]
    assert len(records.read_records(tmp_path / "runs.jsonl")) == 3


def test_runner_skips_a_peer_whose_package_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import tiny

    session = runner.Session(load_model=lambda model_cfg: tiny("llama"))
    real = hf_quantized.importlib.util.find_spec
    backends = {b[0] for b in hf_quantized.BACKENDS.values()}
    monkeypatch.setattr(
        hf_quantized.importlib.util,
        "find_spec",
        lambda name, *a: None if name in backends else real(name, *a),
    )
    cfg = _runner_cfg(
        tmp_path,
        "model=tiny-llama",
        "+model.tiny_head_dim=32",
        "task.prompt_len=48",
        "task.cont_len=4",
        "task.windows=2",
        "quant=hf_quanto2",
        "compare=[fp16]",
    )
    with caplog.at_level(logging.WARNING):
        rows = runner.main(cfg, session)
    assert [r["quant"] for r in rows] == ["fp16"]
    msg = [r.message for r in caplog.records if "hf_quanto2" in r.message]
    assert len(msg) == 1 and "needs optimum-quanto" in msg[0] and "akvq[peers]" in msg[0]
    with pytest.raises(ImportError, match="akvq\\[peers\\]"):
        policy_of("hf_quanto2").new_cache(4)


@pytest.mark.slow
def test_smollm2_perplexity_through_the_task() -> None:
    """The real model: 4-bit is close to fp16, 2-bit worse, both with their own bytes counted."""
    need("quanto")
    from akvq.models import load_model, smollm2
    from akvq.tasks.fidelity import PerplexityTask

    try:
        smollm2.smollm2_location()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    root = REPO / "configs"
    loaded = load_model(yaml.safe_load((root / "model" / "smollm2-135m.yaml").read_text()))
    task = PerplexityTask(
        "ppl", {"prompt_len": 160, "cont_len": 16, "windows": 1, "chunk": 1, "bootstrap": 0}
    )
    ppl = {"fp16": task.run(loaded, make_policy("fp16"))}
    ppl.update({n: task.run(loaded, policy_of(n, residual_length=32)) for n in ("hf_quanto4", "hf_quanto2")})
    assert ppl["hf_quanto4"].metrics["ppl"] < ppl["hf_quanto2"].metrics["ppl"]
    assert ppl["hf_quanto4"].metrics["ppl"] == pytest.approx(ppl["fp16"].metrics["ppl"], rel=0.1)
    assert 2.5 < ppl["hf_quanto2"].kv_effective_bits < 4.5 < ppl["hf_quanto4"].kv_effective_bits < 7


@pytest.mark.parametrize("name", ["hf_quanto2", "hf_quanto4"])
def test_benchmark_save_load_and_batch_copy(name: str, tmp_path: Path) -> None:
    """bench.memory's save/load/repeat on a peer's cache: a batch-1 cache saved, loaded and copied 3 times
    reads exactly as a cache that held the 3 sequences from the start; a flush is what its update does."""
    need("quanto")
    from akvq.bench.memory import kv_bytes_per_token, load_cache, repeat_cache, save_cache

    torch.manual_seed(0)
    k, v = torch.randn(1, 2, 75, 32), torch.randn(1, 2, 75, 32)
    pol = policy_of(name, residual_length=8)
    one = hf_quantized.HFQuantizedCache(pol, 1)
    _drive(one, k, v, 70)
    save_cache(one, tmp_path / "c.pt", {"next_id": 1})
    loaded, extra = load_cache(pol, tmp_path / "c.pt")
    assert extra == {"next_id": 1}
    repeat_cache(loaded, 3)
    three = hf_quantized.HFQuantizedCache(pol, 1)
    _drive(three, k.repeat(3, 1, 1, 1), v.repeat(3, 1, 1, 1), 70)
    assert loaded.memory_report() == three.memory_report()
    assert kv_bytes_per_token(loaded) == pytest.approx(kv_bytes_per_token(one), rel=0.02)  # packing pads rows
    x = torch.randn(3, 2, 1, 32)
    for a, b in zip(loaded.update(x, x, 0), three.update(x, x, 0)):
        assert torch.equal(a, b)
    loaded.flush()
    assert loaded.layers[0].keys.numel() == 0 and loaded.get_seq_length() == 76
    with pytest.raises(NotImplementedError, match="replay"):
        loaded.replay_steps = True


def test_hqq_cache_cannot_be_copied_along_the_batch() -> None:
    need("hqq")
    cache = hf_quantized.HFQuantizedCache(policy_of("hf_hqq2"), 1)
    with pytest.raises(NotImplementedError, match="HQQ's axis-0 groups stride"):
        cache.repeat_batch(2)


@pytest.mark.parametrize("name", ["hf_quanto2", "hf_hqq4"])
def test_exact_chunks_are_token_by_token(name: str) -> None:
    """The ppl task feeds a peer's cache in chunks cut at its flush points: the same logits as one token a step."""
    need(PEERS[name])
    from conftest import tiny

    from akvq.tasks.fidelity import _decode

    loaded = tiny("llama")
    model = loaded.model
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, 60))
    pol = policy_of(name, q_group_size=32, residual_length=8)
    logits = []
    for exact in (True, False):
        cache = api.build_cache(model, pol, {"input_ids": ids[:, :37]})
        with torch.inference_mode():
            model(input_ids=ids[:, :37], **{api.cache_kwarg(): cache}, use_cache=True)
        if not exact:  # the plain step loop
            logits.append(torch.cat([_decode_one(model, cache, ids[:, t : t + 1]) for t in range(37, 60)]))
        else:
            assert cache.exact_chunks(23) == [8, 8, 7]
            logits.append(_decode(model, cache, ids[:, 37:60], chunk=1))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def _decode_one(model: Any, cache: Any, tok: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=tok, **{api.cache_kwarg(): cache}, use_cache=True).logits[0].float()


def _llamacpp_script() -> Any:
    from conftest import load_script

    return load_script("llamacpp_peer")


def test_llamacpp_nll_and_bits() -> None:
    import numpy as np

    mod = _llamacpp_script()
    x = np.array([1.0, 3.0, -2.0, 0.5])
    want = torch.nn.functional.cross_entropy(torch.tensor(x)[None], torch.tensor([1])).item()
    assert mod.nll_at(x, 1) == pytest.approx(want)
    assert mod.BITS == {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5}  # (2 + 32) and (2 + 16) bytes per 32 values


@pytest.mark.slow
def test_llamacpp_ppl_record_lands_in_the_runner_schema(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama.cpp peer needs pip install 'akvq[llamacpp]'")
    mod = _llamacpp_script()
    recs = tmp_path / "runs.jsonl"
    mod.main(
        [
            "ppl",
            "--kv",
            "q4_0",
            "f16",
            "--prompt-len",
            "64",
            "--cont-len",
            "8",
            "--windows",
            "2",
            "--records",
            str(recs),
        ]
    )
    rows = records.read_records(recs)
    assert [r["quant"] for r in rows] == ["llamacpp_q4_0", "llamacpp_f16"]
    for r in rows:
        assert r["model"] == "smollm2-135m" and r["task"] == "ppl" and r["primary_metric"] == "ppl"
        assert r["config"]["task"]["chunk"] == 1 and r["config"]["task"]["windows"] == 2
        assert math.isfinite(r["metrics"]["ppl"]) and len(r["details"]) == 2
    assert rows[0]["kv_effective_bits"] == 4.5 and rows[1]["kv_effective_bits"] == 16
    assert rows[0]["metrics"]["ppl"] == pytest.approx(rows[1]["metrics"]["ppl"], rel=0.3)
