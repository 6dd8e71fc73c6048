"""Decode throughput and the benchmark's worker processes.

`python -m akvq.bench.throughput prepare '<json>'`: load the model, prefill one prompt once (batch 1, 16-bit),
then for every quant config copy that prefill into its cache, run the first decode step (where the prompt gets
quantized; its quantize + WHT time is measured) and save the cache.
`python -m akvq.bench.throughput point '<json>'`: a fresh process for one (quant, batch): load the saved cache,
copy it along the batch, decode `gen_len` steps, report peak memory and tokens/s. Results are one JSON line
on stdout, prefixed with RESULT."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

RESULT = "RESULT "


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))


def load(model_cfg: dict[str, Any], device: str) -> Any:
    from akvq.models import load_model

    cfg = dict(model_cfg)
    if device.startswith("cuda"):
        cfg["device_map"] = device
        cfg["dtype"] = cfg.get("gpu_dtype") or "float16"
    cfg.pop("gpu_dtype", None)
    return load_model(cfg)


def make_policy(quant_cfg: dict[str, Any], hp_dtype: str) -> Any:
    from akvq.policies import make_policy as mk

    return mk(quant_cfg, hp_dtype=hp_dtype)


def steps_error(steps: str | int, quants: dict[str, dict[str, Any]]) -> str | None:
    """Why `steps` timed decode steps would not hold whole flush periods of every cache (None if they do): a cache
    with `flush_every` n quantizes on one step in n, so timing fewer, or a non-multiple, drops or doubles its flushes."""
    n = int(steps) if str(steps).isdigit() else 0
    for q, qc in quants.items():
        every = int(qc.get("flush_every", 1))
        if n < 1 or n % every:
            return f"steps={steps!r} must be a positive multiple of every entry's flush_every ({q}: {every})"
    return None


def build_prompt(loaded: Any, prompt_len: int, vision_share: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """Exactly `prompt_len` tokens, batch 1. Vision models get images (about `vision_share` of the tokens)
    interleaved with text, so TSA layers see both roles; text models get repeated prose."""
    filler = (
        "The history of the city is long and full of turns; merchants, scholars and sailors came and went, "
        "and each left a trace in its streets, its songs and its books. "
    )
    if loaded.processor is None:
        tok = loaded.tokenizer
        ids = tok(filler * (prompt_len // 20 + 2), return_tensors="pt").input_ids[:, :prompt_len]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    from PIL import Image

    from akvq.models.prompting import IMAGE, build_inputs

    probe = build_inputs(loaded, [IMAGE], images=[[Image.new("RGB", (56, 56))]])
    per_image = int(probe["input_ids"].shape[1])
    n_img = max(1, int(prompt_len * vision_share) // per_image)
    g = torch.Generator().manual_seed(seed)
    imgs = [
        Image.fromarray((torch.rand(56, 56, 3, generator=g) * 255).to(torch.uint8).numpy())
        for _ in range(n_img)
    ]
    text_tokens = prompt_len - n_img * per_image
    words = filler.split()
    per_gap = max(1, text_tokens // (n_img + 1) // 2)
    parts = [" ".join(words[:per_gap])] * n_img
    prompt = "".join(f"{IMAGE} {p} " for p in parts) + filler * (prompt_len // 20 + 2)
    enc = build_inputs(loaded, [prompt], images=[imgs])
    enc = dict(enc)
    for k in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if k in enc:
            enc[k] = enc[k][:, :prompt_len]
    return enc


@contextlib.contextmanager
def timed_flushes() -> Iterator[dict[str, list[float]]]:
    """Wall and process-CPU seconds spent in TensorStore.flush (quantize + WHT + packing) while active."""
    from akvq.cache.store import TensorStore

    spent: dict[str, list[float]] = {"wall": [], "cpu": []}
    orig = TensorStore.flush

    def flush(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        t, c = time.perf_counter(), time.process_time()
        orig(self, *args, **kwargs)
        spent["wall"].append(time.perf_counter() - t)
        spent["cpu"].append(time.process_time() - c)  # steadier than wall time on a shared machine

    TensorStore.flush = flush
    try:
        yield spent
    finally:
        TensorStore.flush = orig


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_steps(
    model: Any, cache: Any, ids: torch.Tensor, steps: int, device: str
) -> tuple[list[float], list[float]]:
    """Greedy decode `steps` tokens; (wall seconds, process CPU seconds) per step."""
    from akvq.api import cache_kwarg

    walls, cpus = [], []
    for _ in range(steps):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            out = model(input_ids=ids, **{cache_kwarg(): cache}, use_cache=True, logits_to_keep=1)
        ids = out.logits[:, -1:].argmax(-1)
        _sync(device)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return walls, cpus


def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    from akvq import api
    from akvq.bench.memory import kv_bytes_per_token, save_cache
    from akvq.cache import AKVQCache
    from akvq.runner.execute import peak_memory

    _threads(spec.get("threads"))
    device = spec["device"]
    loaded = load(spec["model"], device)
    base_peak = peak_memory(device)  # model and runtime, before any cache: no budget below this can work
    model = loaded.model
    inputs = build_prompt(loaded, spec["prompt_len"])
    inputs = {k: (v.to(model.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
    seq = int(inputs["input_ids"].shape[1])
    quants: dict[str, dict[str, Any]] = spec["quants"]
    # One prefill for all: prefill K/V is 16-bit whatever the policy; roles and pivots come from the richest one.
    lead = next((n for n, q in quants.items() if q["policy"] == "akvq"), next(iter(quants)))
    policy0 = make_policy(quants[lead], spec["hp_dtype"])
    cache0 = api.build_cache(model, policy0, inputs)
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = api.forward(model, cache0, inputs, prefill=True)
    _sync(device)
    prefill_s, prefill_cpu = time.perf_counter() - t, time.process_time() - c
    next_id = int(out.logits[0, -1].argmax())
    del out
    result: dict[str, Any] = {
        "prefill_seconds": prefill_s,
        "prefill_cpu_seconds": prefill_cpu,
        "seq_len": seq,
        "base_peak_bytes": base_peak,
        "quants": {},
    }
    n_vision = int(cache0.vision_mask.sum()) if cache0.vision_mask is not None else 0
    result["vision_tokens"] = n_vision
    for name, qcfg in quants.items():
        policy = api.resolve_policy(model, make_policy(qcfg, spec["hp_dtype"]))
        if is_peer(policy):  # a peer's own cache: the prompt is quantized where its update does it
            result["quants"][name] = prepare_peer(
                model, policy, cache0, next_id, seq, f"{spec['work_dir']}/{name}.pt", device
            )
            continue
        # Not api.cache_from_prefill: the prefill is copied in unflushed, so its quantization happens inside the
        # timed first step (`timed_flushes`) and is reported as the method's quantization time.
        cache = AKVQCache(policy, len(cache0.layers))
        for attr in ("vision_mask", "pivot_mask", "attention_mask"):
            setattr(cache, attr, getattr(cache0, attr))
        for src, dst in zip(cache0.layers, cache.layers):
            dst.lazy_initialization(src.k.window().to(src.dtype), src.v.window().to(src.dtype))
            dst.k.append(src.k.window())
            dst.v.append(src.v.window())
        ids = torch.full((1, 1), next_id, device=model.device)
        with timed_flushes() as spent:
            walls, _ = decode_steps(model, cache, ids, 1, device)
        path = f"{spec['work_dir']}/{name}.pt"
        save_cache(cache, path, {"next_id": next_id, "seq_len": seq + 1})
        result["quants"][name] = {
            "quant_seconds": sum(spent["wall"]),
            "quant_cpu_seconds": sum(spent["cpu"]),
            "first_step_seconds": walls[0],
            "kv_bytes_per_token_b1": kv_bytes_per_token(cache),
            "effective_bits_b1": cache.memory_report().effective_bits,
            "cache_path": path,
        }
    return result


def is_peer(policy: Any) -> bool:
    """A method that brings another library's cache (transformers' QuantizedCache), not akvq's."""
    from akvq.policies import Policy

    return type(policy).new_cache is not Policy.new_cache


def prepare_peer(
    model: Any, policy: Any, cache0: Any, next_id: int, seq: int, path: str, device: str
) -> dict[str, Any]:
    """transformers' QuantizedCache: hand it the 16-bit prefill (its first update quantizes the prompt, timed
    as its quantization), run the first decode step, save its states."""
    from akvq import api
    from akvq.bench.memory import kv_bytes_per_token, save_cache

    cache = policy.new_cache(len(cache0.layers))
    t, c = time.perf_counter(), time.process_time()
    api.prefill_into(
        cache, [(src.k.window().to(src.dtype), src.v.window().to(src.dtype)) for src in cache0.layers]
    )
    quant_s, quant_cpu = time.perf_counter() - t, time.process_time() - c
    walls, _ = decode_steps(model, cache, torch.full((1, 1), next_id, device=model.device), 1, device)
    save_cache(cache, path, {"next_id": next_id, "seq_len": seq + 1})
    return {
        "quant_seconds": quant_s,
        "quant_cpu_seconds": quant_cpu,
        "first_step_seconds": walls[0],
        "kv_bytes_per_token_b1": kv_bytes_per_token(cache),
        "effective_bits_b1": cache.memory_report().effective_bits,
        "cache_path": path,
    }


def point(spec: dict[str, Any]) -> dict[str, Any]:
    """One (quant, batch) measurement in this fresh process."""
    from akvq import api
    from akvq.attention import use_packed
    from akvq.bench.memory import kv_bytes_per_token, limit_data, load_cache, repeat_cache
    from akvq.runner.execute import peak_memory

    device = spec["device"]
    if not device.startswith("cuda"):
        limit_data(spec.get("data_limit"))
    _threads(spec.get("threads"))
    loaded = load(spec["model"], device)
    model = loaded.model
    policy = api.resolve_policy(model, make_policy(spec["quant_cfg"], spec["hp_dtype"]))
    batch = int(spec["batch"])
    try:
        cache, extra = load_cache(
            policy, spec["cache_path"], device="cuda" if device.startswith("cuda") else "cpu"
        )
        repeat_cache(cache, batch)
        if not is_peer(policy):  # a peer's cache is read as transformers reads it
            use_packed(model, cache, spec["attention"])
        ids = torch.full((batch, 1), extra["next_id"], device=model.device)
        report = cache.memory_report()
        kvpt = kv_bytes_per_token(cache)
        walls, cpus = decode_steps(model, cache, ids, int(spec["gen_len"]) + 1, device)
        flush_s = None
        if hasattr(cache, "flush"):  # a peer that re-quantizes its whole cache every `residual_length` steps
            _sync(device)
            t = time.perf_counter()
            cache.flush()
            _sync(device)
            flush_s = time.perf_counter() - t
    except (RuntimeError, MemoryError) as e:
        msg = str(e)
        if isinstance(e, MemoryError) or "alloc" in msg.lower() or "out of memory" in msg.lower():
            return {"oom": True, "batch": batch, "error": msg[:300], "peak_bytes": peak_memory(device)}
        raise
    walls, cpus = walls[1:], cpus[1:]  # the first step warms up allocators and kernels
    wall, cpu = sum(walls) / len(walls), sum(cpus) / len(cpus)
    return {
        "oom": False,
        "batch": batch,
        "peak_bytes": peak_memory(device),
        "kv_bytes": report.total_bytes,
        "kv_bytes_per_token": kvpt,
        "effective_bits": report.effective_bits,
        "seconds_per_step": wall,
        "cpu_seconds_per_step": cpu,
        "tokens_per_second": batch / wall,
        "tokens_per_cpu_second": batch / cpu,
        "steps": len(walls),
        "context": cache.get_seq_length(),
        "kernel": kernel_name(spec["attention"], device),
        **(
            {}
            if flush_s is None
            else {
                "flush_seconds": flush_s,
                "tokens_per_second_amortized": batch / (wall + flush_s / policy.residual_length),
            }
        ),
    }


def kernel_name(attention: str, device: str) -> str:
    """Which kernel "akvq_packed" (attention=auto) uses here when the layout allows (C needs a C compiler;
    Triton needs CUDA); the names are those of the existing records."""
    if attention != "akvq_packed":
        return attention
    if device.startswith("cuda"):
        from akvq.attention import packed_triton

        return "triton" if packed_triton.available() else "torch"
    from akvq.attention import packed_cpu

    return "c" if packed_cpu.available() else f"torch ({packed_cpu.status()})"


def main(argv: list[str]) -> None:
    kind, spec = argv[0], json.loads(argv[1])
    out = prepare(spec) if kind == "prepare" else point(spec)
    print(RESULT + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
