"""Fidelity tasks on a real text model: where this machine can measure the accuracy a quantized cache loses.

The prefill is full precision under every policy (quantization starts at the next update), so its K/V, its last
logits and its pivot masks are computed once per window and shared by all policies of a sweep in this process."""

from __future__ import annotations

import contextlib
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm
from transformers import DynamicCache

from akvq import api
from akvq.attention.replay import can_replay, replayed
from akvq.errors import ConfigError
from akvq.tasks.base import Task, TaskResult, cfg_get
from akvq.tasks.text import corpus_ids, pydoc_corpus, windows

log = logging.getLogger(__name__)


@dataclass
class Prefill:
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    last_logits: torch.Tensor
    pivots: dict[tuple, torch.Tensor] = field(default_factory=dict)


_MEMO: dict[tuple, Prefill] = {}
_MEMO_LIMIT = 12


def shared_prefill(model: Any, ids: torch.Tensor, policy: Any) -> Prefill:
    """Full-precision prefill of one prompt, memoized per (model, prompt) across policies."""
    key = (id(model), ids.shape[-1], hash(tuple(ids[0, :64].tolist())), hash(tuple(ids[0, -64:].tolist())))
    pre = _MEMO.get(key)
    pkey = api.pivot_key(policy)
    if pre is not None and (pkey is None or pkey in pre.pivots):
        return pre
    rec = api.PivotRecorder(policy)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    dyn = DynamicCache(config=model.config)
    ctx = api.pivot_detection(model, rec) if pkey is not None else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        out = model(**inputs, **{api.cache_kwarg(): dyn}, use_cache=True, logits_to_keep=1)
    kv = [(layer.keys, layer.values) for layer in dyn.layers]
    if pre is None:
        pre = Prefill(kv, out.logits[:, -1].float())
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = pre
    if pkey is not None:
        if rec.mask is None:
            raise RuntimeError("pivot detection ran but reported no pivots")
        pre.pivots[pkey] = rec.mask
    return pre


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


class PerplexityTask(Task):
    """Teacher-forced perplexity of continuations read through the quantized cache, token by token."""

    primary_metric = "ppl"

    def validate(self) -> None:
        chunk, replay = int(cfg_get(self.cfg, "chunk", 1)), bool(cfg_get(self.cfg, "replay", True))
        if chunk < 1 or (replay and chunk != 1):
            raise ConfigError(
                f"ppl: task.chunk={chunk} is not allowed with task.replay={replay}; replay decodes token by token "
                "(chunk=1), set task.replay=false for the step loop with chunk >= 1"
            )

    def run(self, loaded: Any, policy: Any, cfg: Any = None) -> TaskResult:
        cfg = cfg if cfg is not None else self.cfg
        model, tok = loaded.model, loaded.tokenizer
        p_len, c_len = int(cfg_get(cfg, "prompt_len", 4096)), int(cfg_get(cfg, "cont_len", 256))
        n_win = int(cfg_get(cfg, "windows", 8))
        chunk, replay = int(cfg_get(cfg, "chunk", 1)), bool(cfg_get(cfg, "replay", True))
        ids_all = windows(corpus_ids(tok), p_len + c_len, n_win)
        window_nll, details, report = [], [], None
        for w, ids in enumerate(tqdm(ids_all, desc=f"ppl {policy.name}", leave=False)):
            ids = torch.tensor([ids], device=model.device)
            prompt, cont = ids[:, :p_len], ids[:, p_len:]
            pre = shared_prefill(model, prompt, policy)
            cache = cache_from_prefill(model, policy, prompt, pre)
            logits = torch.cat([pre.last_logits, _decode(model, cache, cont[:, :-1], chunk, replay)])
            nll = torch.nn.functional.cross_entropy(logits, cont[0], reduction="mean").item()
            window_nll.append(nll)
            report = cache.memory_report()
            details.append(
                {"window": w, "nll": nll, "ppl": math.exp(nll), "effective_bits": report.effective_bits}
            )
        lo, hi = bootstrap_ppl(window_nll, int(cfg_get(cfg, "bootstrap", 1000)), int(cfg_get(cfg, "seed", 0)))
        ppl = math.exp(sum(window_nll) / len(window_nll))
        return TaskResult(
            metrics={"ppl": ppl, "ppl_lo": lo, "ppl_hi": hi, "nll": sum(window_nll) / len(window_nll)},
            kv_bytes=report.total_bytes,
            kv_effective_bits=report.effective_bits,
            num_tokens=n_win * c_len,
            details=details,
        )


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


class PasskeyTask(Task):
    """Retrieval of a 5-digit key hidden at a random depth of real text, by prompt length."""

    primary_metric = "acc"

    def run(self, loaded: Any, policy: Any, cfg: Any = None) -> TaskResult:
        cfg = cfg if cfg is not None else self.cfg
        model, tok = loaded.model, loaded.tokenizer
        lengths = [int(x) for x in cfg_get(cfg, "lengths", [1024, 2048, 4096, 8192])]
        trials = int(cfg_get(cfg, "trials", 5))
        gen = int(cfg_get(cfg, "gen_len", 8))
        rng = random.Random(int(cfg_get(cfg, "seed", 0)))
        metrics: dict[str, float] = {}
        details, report, total_ok, n_tok = [], None, 0, 0
        plan = [
            (L, rng.randint(10000, 99999), rng.random(), rng.randint(0, 10**9))
            for L in lengths
            for _ in range(trials)
        ]
        max_pos = (
            getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None) or 1 << 30
        )
        for L, key, depth, offset in tqdm(plan, desc=f"passkey {policy.name}", leave=False):
            n = min(L, max_pos - gen)  # "8K" on an 8192-position model leaves room for the answer
            ids = torch.tensor([passkey_prompt(tok, n, key, depth, offset)], device=model.device)
            pre = shared_prefill(model, ids, policy)
            cache = cache_from_prefill(model, policy, ids, pre)
            nxt = pre.last_logits.argmax(-1, keepdim=True)
            out = [nxt]
            with torch.inference_mode():
                for _ in range(gen - 1):
                    o = model(input_ids=out[-1], **{api.cache_kwarg(): cache}, use_cache=True)
                    out.append(o.logits[:, -1].argmax(-1, keepdim=True))
            text = tok.decode(torch.cat(out, -1)[0])
            ok = str(key) in text
            total_ok += ok
            n_tok += gen
            report = cache.memory_report() if L == max(lengths) else report
            details.append({"length": L, "key": key, "depth": depth, "output": text, "correct": ok})
        for L in lengths:
            rows = [d for d in details if d["length"] == L]
            metrics[f"acc@{L}"] = sum(d["correct"] for d in rows) / len(rows)
        metrics["acc"] = total_ok / len(details)
        return TaskResult(metrics, report.total_bytes, report.effective_bits, n_tok, details)


class AgreementTask(Task):
    """Share of greedy tokens equal to the fp16 continuation (the fp16 run of the same prompts is the reference)."""

    primary_metric = "agreement"

    def run(self, loaded: Any, policy: Any, cfg: Any = None) -> TaskResult:
        from akvq.policies import make_policy

        cfg = cfg if cfg is not None else self.cfg
        model, tok = loaded.model, loaded.tokenizer
        p_len, gen = int(cfg_get(cfg, "prompt_len", 1024)), int(cfg_get(cfg, "gen_len", 64))
        samples = int(cfg_get(cfg, "samples", 4))
        ref_policy = make_policy("fp16")
        agree = total = 0
        details, report = [], None
        for s, ids in enumerate(windows(corpus_ids(tok), p_len, samples)):
            ids = torch.tensor([ids], device=model.device)
            pre = shared_prefill(model, ids, policy)
            seqs = []
            for pol in (ref_policy, policy):
                cache = cache_from_prefill(model, pol, ids, pre)
                out = [pre.last_logits.argmax(-1, keepdim=True)]
                with torch.inference_mode():
                    for _ in range(gen - 1):
                        # Teacher-force the reference tokens so one early divergence does not decide the rest.
                        feed = seqs[0][:, len(out) - 1 : len(out)] if seqs else out[-1]
                        o = model(input_ids=feed, **{api.cache_kwarg(): cache}, use_cache=True)
                        out.append(o.logits[:, -1].argmax(-1, keepdim=True))
                seqs.append(torch.cat(out, -1))
                report = cache.memory_report()
            same = (seqs[0] == seqs[1]).sum().item()
            agree += same
            total += gen
            details.append({"sample": s, "agree": same / gen})
        return TaskResult(
            {"agreement": agree / total}, report.total_bytes, report.effective_bits, total, details
        )


__all__ = ["AgreementTask", "PasskeyTask", "PerplexityTask", "pydoc_corpus"]
