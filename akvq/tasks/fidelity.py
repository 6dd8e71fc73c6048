"""Fidelity tasks on a real text model: where this machine can measure the accuracy a quantized cache loses.

The prefill is 16-bit under every policy (quantization starts at the next update), so its K/V, its last logits
and its pivot masks are computed once per prompt for all policies of a run (`run_shared`: the runner's `quant` +
`compare` in one process), and each policy's cache is built from them."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm
from transformers import DynamicCache

from akvq import api
from akvq.attention.replay import can_replay, replayed
from akvq.errors import ConfigError
from akvq.tasks.base import SharedPrefillTask, TaskResult, cfg_get
from akvq.tasks.text import corpus_ids, pydoc_corpus, windows

log = logging.getLogger(__name__)


@dataclass
class Prefill:
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    last_logits: torch.Tensor
    pivots: dict[tuple, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0  # counted in each policy's own seconds (what it would take alone)


def prefill(model: Any, ids: torch.Tensor, policies: list[Any]) -> Prefill:
    """One prompt's prefill for all `policies`: one forward into a `DynamicCache` (the model's dtype; a peer's
    cache is fed the same K/V), every pivot rule among the policies detected in it."""
    t0 = time.perf_counter()
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    dyn = DynamicCache(config=model.config)
    with torch.inference_mode(), api.recording_pivots(model, policies) as pivots:
        out = model(**inputs, **{api.cache_kwarg(): dyn}, use_cache=True, logits_to_keep=1)
    kv = [(layer.keys, layer.values) for layer in dyn.layers]
    return Prefill(kv, out.logits[:, -1].float(), pivots, time.perf_counter() - t0)


def _label(policies: list[Any]) -> str:
    return policies[0].name if len(policies) == 1 else f"{len(policies)} methods"


def cache_from_prefill(model: Any, policy: Any, ids: torch.Tensor, pre: Prefill, read_path: str = "cached"):
    """A policy's cache holding the shared prefill, exactly as if this policy had run it (`api.cache_from_prefill`)."""
    pkey = api.pivot_key(policy)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pivots = pre.pivots[pkey] if pkey is not None else None
    return api.cache_from_prefill(model, policy, inputs, pre.kv, pivots, read_path=read_path)


def _decode(
    model: Any, cache: Any, tokens: torch.Tensor, chunk: int = 1, replay: bool = True
) -> torch.Tensor:
    """Logits [n, V] fp32 of tokens [1, n] fed through the cache. `replay`: token-by-token decoding, computed in
    one forward (`akvq.attention.replay`; the same logits as the step loop, tested). Else `chunk` tokens per
    forward: 1 is the step loop itself; larger chunks are a biased proxy (tokens inside a chunk attend to each
    other in full precision, and the chunk fills the 16-bit window before its first token attends: a 128-token
    window gives 113-128 16-bit keys at chunk 16, per-channel groups are untouched). A cache that cannot
    replay (a peer's) takes the step loop: the same token-by-token numbers, slower."""
    with torch.inference_mode():
        if replay and not can_replay(cache):
            replay, chunk = False, 1
        if replay:
            with replayed(model, cache):
                o = model(input_ids=tokens, **{api.cache_kwarg(): cache}, use_cache=True)
            return o.logits[0].float()
        n = tokens.shape[-1]
        # A cache that knows chunk sizes equal to token-by-token decoding (transformers' QuantizedCache) uses them.
        sizes = (
            cache.exact_chunks(n)
            if chunk == 1 and hasattr(cache, "exact_chunks")
            else [chunk] * -(-n // chunk)
        )
        out, i = [], 0
        for size in sizes:
            o = model(input_ids=tokens[:, i : i + size], **{api.cache_kwarg(): cache}, use_cache=True)
            out.append(o.logits[0].float())
            i += size
    return torch.cat(out)


def bootstrap_ppl(window_nll: list[float], n: int, seed: int) -> tuple[float, float]:
    """95% interval of exp(mean NLL) resampling whole windows (tokens within a window are not independent)."""
    if len(window_nll) < 2 or n <= 0:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    k = len(window_nll)
    stats = sorted(math.exp(sum(rng.choices(window_nll, k=k)) / k) for _ in range(n))
    return stats[int(0.025 * (n - 1))], stats[int(0.975 * (n - 1))]


class PerplexityTask(SharedPrefillTask):
    """Teacher-forced perplexity of continuations read through the quantized cache, token by token."""

    primary_metric = "ppl"

    def validate(self) -> None:
        chunk, replay = int(cfg_get(self.cfg, "chunk", 1)), bool(cfg_get(self.cfg, "replay", True))
        if chunk < 1 or (replay and chunk != 1):
            raise ConfigError(
                f"ppl: task.chunk={chunk} is not allowed with task.replay={replay}; replay decodes token by token "
                "(chunk=1), set task.replay=false for the step loop with chunk >= 1"
            )

    def run_shared(self, loaded: Any, runs: list[tuple[Any, Any]]) -> list[TaskResult]:
        """Each window's prompt is prefilled once; every policy scores its continuation from that prefill."""
        cfg = runs[0][1] if runs[0][1] is not None else self.cfg
        policies = [policy for policy, _ in runs]
        model, tok = loaded.model, loaded.tokenizer
        p_len, c_len = int(cfg_get(cfg, "prompt_len", 4096)), int(cfg_get(cfg, "cont_len", 256))
        n_win = int(cfg_get(cfg, "windows", 8))
        chunk, replay = int(cfg_get(cfg, "chunk", 1)), bool(cfg_get(cfg, "replay", True))
        ids_all = windows(corpus_ids(tok), p_len + c_len, n_win)
        window_nll: list[list[float]] = [[] for _ in runs]
        details: list[list[dict[str, Any]]] = [[] for _ in runs]
        reports: list[Any] = [None for _ in runs]
        seconds = [0.0 for _ in runs]
        for w, ids in enumerate(tqdm(ids_all, desc=f"ppl {_label(policies)}", leave=False)):
            ids = torch.tensor([ids], device=model.device)
            prompt, cont = ids[:, :p_len], ids[:, p_len:]
            pre = prefill(model, prompt, policies)
            for r, policy in enumerate(policies):
                t0 = time.perf_counter()
                cache = cache_from_prefill(model, policy, prompt, pre)
                logits = torch.cat([pre.last_logits, _decode(model, cache, cont[:, :-1], chunk, replay)])
                nll = torch.nn.functional.cross_entropy(logits, cont[0], reduction="mean").item()
                window_nll[r].append(nll)
                reports[r] = report = cache.memory_report()
                details[r].append(
                    {"window": w, "nll": nll, "ppl": math.exp(nll), "effective_bits": report.effective_bits}
                )
                seconds[r] += pre.seconds + time.perf_counter() - t0
        n_boot, seed = int(cfg_get(cfg, "bootstrap", 1000)), int(cfg_get(cfg, "seed", 0))
        results = []
        for nlls, det, report, secs in zip(window_nll, details, reports, seconds, strict=True):
            lo, hi = bootstrap_ppl(nlls, n_boot, seed)
            nll = sum(nlls) / len(nlls)
            results.append(
                TaskResult(
                    metrics={"ppl": math.exp(nll), "ppl_lo": lo, "ppl_hi": hi, "nll": nll},
                    kv_bytes=report.total_bytes,
                    kv_effective_bits=report.effective_bits,
                    num_tokens=n_win * c_len,
                    details=det,
                    seconds=secs,
                )
            )
        return results


PASSKEY_TEMPLATE = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n\n"
PASSKEY_NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
PASSKEY_QUESTION = "\n\nWhat is the pass key? The pass key is"


def passkey_prompt(tok: Any, length: int, key: int, depth: float, offset: int) -> list[int]:
    """A prompt of exactly `length` tokens: real filler text with the needle at relative `depth`."""
    head = tok(PASSKEY_TEMPLATE, add_special_tokens=False)["input_ids"]
    needle = tok(PASSKEY_NEEDLE.format(key=key), add_special_tokens=False)["input_ids"]
    tail = tok(PASSKEY_QUESTION, add_special_tokens=False)["input_ids"]
    n_fill = length - len(head) - len(needle) - len(tail)
    if n_fill < 16:
        raise ValueError(f"passkey length {length} is too short")
    ids = corpus_ids(tok)
    start = offset % max(1, len(ids) - n_fill)
    filler = ids[start : start + n_fill]
    cut = int(depth * n_fill)
    return head + filler[:cut] + needle + filler[cut:] + tail


class PasskeyTask(SharedPrefillTask):
    """Retrieval of a 5-digit key hidden at a random depth of real text, by prompt length."""

    primary_metric = "acc"

    def run_shared(self, loaded: Any, runs: list[tuple[Any, Any]]) -> list[TaskResult]:
        """Each trial's prompt is prefilled once; every policy decodes its answer from that prefill."""
        cfg = runs[0][1] if runs[0][1] is not None else self.cfg
        policies = [policy for policy, _ in runs]
        model, tok = loaded.model, loaded.tokenizer
        lengths = [int(x) for x in cfg_get(cfg, "lengths", [1024, 2048, 4096, 8192])]
        trials = int(cfg_get(cfg, "trials", 5))
        gen = int(cfg_get(cfg, "gen_len", 8))
        rng = random.Random(int(cfg_get(cfg, "seed", 0)))
        details: list[list[dict[str, Any]]] = [[] for _ in runs]
        reports: list[Any] = [None for _ in runs]
        seconds = [0.0 for _ in runs]
        plan = [
            (L, rng.randint(10000, 99999), rng.random(), rng.randint(0, 10**9))
            for L in lengths
            for _ in range(trials)
        ]
        max_pos = (
            getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None) or 1 << 30
        )
        for L, key, depth, offset in tqdm(plan, desc=f"passkey {_label(policies)}", leave=False):
            n = min(L, max_pos - gen)  # "8K" on an 8192-position model leaves room for the answer
            ids = torch.tensor([passkey_prompt(tok, n, key, depth, offset)], device=model.device)
            pre = prefill(model, ids, policies)
            for r, policy in enumerate(policies):
                t0 = time.perf_counter()
                cache = cache_from_prefill(model, policy, ids, pre)
                out = [pre.last_logits.argmax(-1, keepdim=True)]
                with torch.inference_mode():
                    for _ in range(gen - 1):
                        o = model(input_ids=out[-1], **{api.cache_kwarg(): cache}, use_cache=True)
                        out.append(o.logits[:, -1].argmax(-1, keepdim=True))
                text = tok.decode(torch.cat(out, -1)[0])
                if L == max(lengths):
                    reports[r] = cache.memory_report()
                details[r].append(
                    {"length": L, "key": key, "depth": depth, "output": text, "correct": str(key) in text}
                )
                seconds[r] += pre.seconds + time.perf_counter() - t0
        results = []
        for det, report, secs in zip(details, reports, seconds, strict=True):
            metrics: dict[str, float] = {}
            for L in lengths:
                rows = [d for d in det if d["length"] == L]
                metrics[f"acc@{L}"] = sum(d["correct"] for d in rows) / len(rows)
            metrics["acc"] = sum(d["correct"] for d in det) / len(det)
            results.append(
                TaskResult(metrics, report.total_bytes, report.effective_bits, gen * len(det), det, secs)
            )
        return results


class AgreementTask(SharedPrefillTask):
    """Share of greedy tokens equal to the fp16 continuation (the fp16 run of the same prompts is the reference)."""

    primary_metric = "agreement"

    def run_shared(self, loaded: Any, runs: list[tuple[Any, Any]]) -> list[TaskResult]:
        """Each sample's prompt is prefilled once and its fp16 reference decoded once, for every policy."""
        from akvq.policies import make_policy

        cfg = runs[0][1] if runs[0][1] is not None else self.cfg
        policies = [policy for policy, _ in runs]
        model, tok = loaded.model, loaded.tokenizer
        p_len, gen = int(cfg_get(cfg, "prompt_len", 1024)), int(cfg_get(cfg, "gen_len", 64))
        samples = int(cfg_get(cfg, "samples", 4))
        ref_policy = make_policy("fp16")

        def greedy(policy: Any, ids: torch.Tensor, pre: Prefill, ref: torch.Tensor | None) -> tuple:
            cache = cache_from_prefill(model, policy, ids, pre)
            out = [pre.last_logits.argmax(-1, keepdim=True)]
            with torch.inference_mode():
                for _ in range(gen - 1):
                    # Teacher-force the reference tokens so one early divergence does not decide the rest.
                    feed = ref[:, len(out) - 1 : len(out)] if ref is not None else out[-1]
                    o = model(input_ids=feed, **{api.cache_kwarg(): cache}, use_cache=True)
                    out.append(o.logits[:, -1].argmax(-1, keepdim=True))
            return torch.cat(out, -1), cache

        agree = [0 for _ in runs]
        details: list[list[dict[str, Any]]] = [[] for _ in runs]
        reports: list[Any] = [None for _ in runs]
        seconds = [0.0 for _ in runs]
        prompts = windows(corpus_ids(tok), p_len, samples)
        for s, ids in enumerate(prompts):
            ids = torch.tensor([ids], device=model.device)
            pre = prefill(model, ids, policies)
            t0 = time.perf_counter()
            ref, _ = greedy(ref_policy, ids, pre, None)
            ref_s = pre.seconds + time.perf_counter() - t0  # the reference is part of each run's work
            for r, policy in enumerate(policies):
                t0 = time.perf_counter()
                seq, cache = greedy(policy, ids, pre, ref)
                reports[r] = cache.memory_report()
                same = (ref == seq).sum().item()
                agree[r] += same
                details[r].append({"sample": s, "agree": same / gen})
                seconds[r] += ref_s + time.perf_counter() - t0
        total = gen * len(prompts)
        return [
            TaskResult({"agreement": a / total}, rep.total_bytes, rep.effective_bits, total, det, secs)
            for a, det, rep, secs in zip(agree, details, reports, seconds, strict=True)
        ]


__all__ = ["AgreementTask", "PasskeyTask", "PerplexityTask", "prefill", "pydoc_corpus"]
