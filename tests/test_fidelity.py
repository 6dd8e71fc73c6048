"""Fidelity tasks: the fp16 cache reproduces a plain forward's perplexity; quantized caches run and count bits."""

import math

import torch
from conftest import tiny

from akvq.policies import make_policy
from akvq.tasks.fidelity import PasskeyTask, PerplexityTask, bootstrap_ppl
from akvq.tasks.text import corpus_ids, windows

CFG = {"prompt_len": 96, "cont_len": 12, "windows": 2, "chunk": 4, "bootstrap": 200}


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
