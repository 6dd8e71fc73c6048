"""Fidelity tasks: the fp16 cache reproduces a plain forward's perplexity; quantized caches run and count bits."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny
from transformers import DynamicCache

from akvq import api
from akvq.attention.replay import replayed
from akvq.errors import ConfigError
from akvq.policies import make_policy
from akvq.tasks.fidelity import (
    AgreementTask,
    PasskeyTask,
    PerplexityTask,
    _decode,
    bootstrap_ppl,
    cache_from_prefill,
    prefill,
)
from akvq.tasks.text import corpus_ids, windows

CFG = {"prompt_len": 96, "cont_len": 12, "windows": 2, "bootstrap": 200}


def test_fp16_perplexity_equals_a_plain_forward():
    loaded = tiny("llama")
    res = PerplexityTask("ppl", CFG).run(loaded, make_policy("fp16", hp_dtype="model"))
    nll = []
    for ids in windows(corpus_ids(loaded.tokenizer), 108, 2):
        ids = torch.tensor([ids])
        with torch.inference_mode():
            logits = loaded.model(input_ids=ids).logits[0, 95:-1].float()
        nll.append(torch.nn.functional.cross_entropy(logits, ids[0, 96:]).item())
    assert math.isclose(res.metrics["ppl"], math.exp(sum(nll) / 2), rel_tol=1e-4)
    assert res.num_tokens == 24 and len(res.details) == 2


def test_quantized_perplexity_runs_and_counts_bits():
    loaded = tiny("llama")
    res = PerplexityTask("ppl", CFG).run(loaded, make_policy("akvq", window=8, num_pivots=2))
    assert math.isfinite(res.metrics["ppl"]) and res.kv_effective_bits < 16
    assert res.metrics["ppl_lo"] <= res.metrics["ppl"] * 1.5


def test_passkey_reports_each_length():
    res = PasskeyTask("passkey", {"lengths": [128, 160], "trials": 1, "gen_len": 4}).run(
        tiny("llama"), make_policy("kivi2", residual=16)
    )
    assert set(res.metrics) == {"acc@128", "acc@160", "acc"}


def test_bootstrap_interval_brackets_the_mean():
    lo, hi = bootstrap_ppl([2.0, 2.2, 2.4, 2.1], 500, 0)
    assert lo <= math.exp(2.175) <= hi


REPLAYED = [
    ("fp16", {}),
    ("rtn2", {}),
    ("kivi2", {"group_size": 16, "residual": 16}),
    ("skvq", {"window": 16, "sink": 3}),
    ("smoothquant", {}),
    ("akvq", {"window": 16, "num_pivots": 2}),
    ("akvq_plus", {"window": 16, "num_pivots": 2, "k_group_tokens": 16}),
    ("akvq_plus_w8", {"window": 16, "num_pivots": 2, "k_group_tokens": 16}),
    ("kivi2", {"group_size": 16, "residual": 16, "window_bits": 8}),
]


@pytest.mark.parametrize(("name", "fields"), REPLAYED, ids=[f"{n}{i}" for i, (n, _) in enumerate(REPLAYED)])
def test_replayed_decoding_equals_the_step_loop(name, fields):
    """One replayed forward gives the step loop's logits and leaves the cache in the same state, across window
    exits, channel-group flushes, pivots and sinks (40 tokens after a 96-token prompt, windows of 16)."""
    loaded = tiny("llama")
    ids = torch.tensor([windows(corpus_ids(loaded.tokenizer), 136, 1)[0]])
    prompt, cont = ids[:, :96], ids[:, 96:]
    policy = make_policy(name, **fields)
    pre = prefill(loaded.model, prompt, [policy])
    caches = [cache_from_prefill(loaded.model, policy, prompt, pre) for _ in range(2)]
    step = _decode(loaded.model, caches[0], cont, chunk=1, replay=False)
    once = _decode(loaded.model, caches[1], cont, replay=True)
    torch.testing.assert_close(once, step, rtol=1e-4, atol=1e-4)
    assert caches[1].memory_report() == caches[0].memory_report()
    for a, b in zip(caches[0].layers, caches[1].layers):
        for sa, sb in ((a.k, b.k), (a.v, b.v)):
            assert (sa.n_q, sa.tail_len) == (sb.n_q, sb.tail_len)
            # K/V computed for 40 rows at once round differently in the last bit from one row at a time, which
            # can move a 16-bit value by an ulp or a code across a rounding edge: rare, never systematic.
            off = (sb.materialize(torch.float32) - sa.materialize(torch.float32)).abs() > 1e-3
            assert off.float().mean() < 1e-3


def test_a_cache_that_cannot_replay_is_decoded_step_by_step():
    """transformers' own caches take a many-token forward as one chunk; `_decode` feeds them token by token."""
    loaded = tiny("llama")
    ids = torch.tensor([windows(corpus_ids(loaded.tokenizer), 48, 1)[0]])
    with torch.inference_mode():
        full = loaded.model(input_ids=ids).logits[0, 32:].float()
        cache = DynamicCache(config=loaded.model.config)
        loaded.model(input_ids=ids[:, :32], **{api.cache_kwarg(): cache}, use_cache=True)
    torch.testing.assert_close(
        _decode(loaded.model, cache, ids[:, 32:], replay=True), full, rtol=1e-4, atol=1e-4
    )
    with pytest.raises(NotImplementedError, match="cannot replay"), replayed(loaded.model, cache):
        pass


def test_a_chunked_proxy_must_be_asked_for():
    """chunk > 1 is a proxy: with the default replay it is refused in one line, before any model loads."""
    with pytest.raises(ConfigError, match=r"task.chunk=16 .*task.replay=false"):
        PerplexityTask("ppl", {"chunk": 16}).validate()
    PerplexityTask("ppl", {"chunk": 16, "replay": False}).validate()


SHARED = [
    ("ppl", PerplexityTask, CFG),
    ("passkey", PasskeyTask, {"lengths": [128, 160], "trials": 2, "gen_len": 4}),
    ("agreement", AgreementTask, {"prompt_len": 96, "gen_len": 6, "samples": 2}),
]


@pytest.mark.parametrize(("name", "cls", "cfg"), SHARED, ids=[s[0] for s in SHARED])
def test_shared_runs_equal_separate_runs_off_one_prefill_per_prompt(name, cls, cfg, monkeypatch):
    """`run_shared` (the runner's `quant` + `compare`) gives each policy what its own `run` gives, with one
    prefill forward per prompt for all of them, two pivot rules detected in it."""
    import akvq.tasks.fidelity as fidelity

    loaded = tiny("llama")
    policies = [
        make_policy("fp16", hp_dtype="model"),
        make_policy("kivi2", residual=16),
        make_policy("akvq", window=8, num_pivots=2),
        make_policy("akvq", window=8, num_pivots=3),
    ]
    assert len({api.pivot_key(p) for p in policies} - {None}) == 2
    calls = []
    real = fidelity.prefill
    monkeypatch.setattr(fidelity, "prefill", lambda *a: calls.append(a) or real(*a))
    task = cls(name, cfg)
    alone = [task.run(loaded, p) for p in policies]
    n_prompts = len(calls) // len(policies)
    calls.clear()
    shared = task.run_shared(loaded, [(p, cfg) for p in policies])
    assert len(calls) == n_prompts and all(len(c[2]) == len(policies) for c in calls)
    for a, s in zip(alone, shared, strict=True):
        assert s.metrics == a.metrics and s.details == a.details
        assert (s.kv_bytes, s.kv_effective_bits, s.num_tokens) == (
            a.kv_bytes,
            a.kv_effective_bits,
            a.num_tokens,
        )
        assert s.seconds is not None and s.seconds > 0
    assert len({s.kv_effective_bits for s in shared}) == len(
        policies
    )  # four methods, not one cache four times


def test_corpus_ids_follow_the_tokenizer_object_not_its_id():
    """Tokenized once per tokenizer object, and nothing of a freed one is left for the next: keyed by `id()`, a
    sweep's next model could get the freed tokenizer's address and with it the wrong token ids."""
    import gc
    import weakref

    from akvq.tasks import text

    class Tok:
        def __init__(self, offset: int):
            self.offset = offset

        def __call__(self, s: str, add_special_tokens: bool = False) -> dict:
            return {"input_ids": [self.offset + (ord(c) % 7) for c in s[:50]]}

    a, b = Tok(0), Tok(100)
    assert text.corpus_ids(a) is text.corpus_ids(a) and min(text.corpus_ids(b)) >= 100
    gone = weakref.ref(a)
    before = len(text._IDS)
    del a
    gc.collect()
    assert gone() is None and len(text._IDS) == before - 1


@pytest.mark.parametrize(
    ("content", "why"), [(None, "no such file"), ('{"task": "passkey"}\n', "no records of ppl")]
)
def test_the_fidelity_table_refuses_a_missing_file_or_one_without_its_tasks(
    tmp_path: Path, content: str | None, why: str
) -> None:
    path = tmp_path / "r.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve().parents[1] / "scripts" / "fidelity_table.py"),
        "--records",
        str(path),
        "--task",
        "ppl",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert p.returncode == 2 and why in p.stderr.strip().splitlines()[-1] and p.stdout == ""
