"""Table IV on the paper's architecture: LLaVA-1.5-7B's exact config, random fp16 weights, one GPU.

Decode memory and speed do not depend on the weight values (same shapes, kernels and bytes), so random weights
stand in for the checkpoint, which this workplace cannot download; the table says so. For each prompt length and
method (fp16: transformers' DynamicCache read by SDPA, the Hugging Face default; kivi2 and akvq: akvq's packed
cache read by the Triton kernel): KV bytes per token, the largest batch whose peak GPU memory (the caching
most bytes allocated at once, the model included) stays within each budget (32 GiB: the paper's V100; 80 GiB),
tokens/s at that batch, and the peak memory of every method at fp16's largest batch (the paper's "peak memory"
column compares methods at one batch). A point: prefill batch 1 (with its images), copy the cache along the
batch, decode `--steps` tokens after one warm-up step; the search is `akvq.bench.batch_search.largest_batch`.

    python scripts/gpu_table4.py --out results/efficiency/gpu        # one H200: a few minutes
    python scripts/gpu_table4.py --tiny --out /tmp/t4                # the same code on a tiny config, CPU (a check;
                                                                     # "peak" there = weights + the most KV bytes held)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from akvq import api  # noqa: E402
from akvq.attention import use_packed  # noqa: E402
from akvq.attention.paths import select  # noqa: E402
from akvq.bench.batch_search import Point, largest_batch  # noqa: E402
from akvq.bench.syncs import HostSyncs  # noqa: E402
from akvq.bench.throughput import decode_steps  # noqa: E402
from akvq.cache import AKVQCache  # noqa: E402
from akvq.paths import write_atomic  # noqa: E402
from akvq.policies import make_policy  # noqa: E402

GiB = 1 << 30
IMAGE_TOKENS = 576  # LLaVA-1.5: a 336x336 image in 14x14 patches, CLS dropped
METHODS = {
    "fp16": None,  # transformers' DynamicCache + SDPA
    "kivi2": {"policy": "kivi", "bits": 2, "group_size": 128, "residual": 128, "float_zero": True},
    "akvq": {
        "policy": "akvq",
        "bits": 2,
        "text_bits": 4,
        "group_size": 128,
        "window": 128,
        "hadamard": True,
        "tsa": True,
        "psa": True,
        "num_pivots": 15,
    },
}


def llava_config(tiny: bool) -> Any:
    """llava-hf/llava-1.5-7b-hf's config (CLIP ViT-L/14-336 + Vicuna-7B); tiny: the same layout, small widths."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=64 if tiny else 1024,
        intermediate_size=128 if tiny else 4096,
        num_hidden_layers=2 if tiny else 24,
        num_attention_heads=4 if tiny else 16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=256 if tiny else 4096,
        intermediate_size=512 if tiny else 11008,
        num_hidden_layers=4 if tiny else 32,
        num_attention_heads=2 if tiny else 32,
        num_key_value_heads=2 if tiny else 32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        pad_token_id=32001,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=32000,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=IMAGE_TOKENS,
    )


def build_model(tiny: bool, device: str) -> Any:
    from transformers import LlavaForConditionalGeneration

    cfg = llava_config(tiny)
    cfg._attn_implementation = "sdpa"
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(before)
    model.eval()
    # the layer pattern (TSA layers 0-1) of the paper's model; the tiny one's 4 layers have their own
    model._akvq_model_name = "tiny-llava" if tiny else "llava-1.5-7b"
    return model


def prompt(model: Any, length: int, device: str) -> dict[str, torch.Tensor]:
    """`length` tokens: BOS, then images (about half the tokens, at least one) each followed by text."""
    n_img = max(1, (length // 2) // IMAGE_TOKENS)
    text = length - 1 - n_img * IMAGE_TOKENS
    assert text >= n_img, f"prompt {length} too short for {n_img} images"
    g = torch.Generator().manual_seed(length)
    per = text // n_img
    ids = [1]
    for i in range(n_img):
        ids += [32000] * IMAGE_TOKENS
        n = per if i < n_img - 1 else text - per * (n_img - 1)
        ids += torch.randint(2, 32000, (n,), generator=g).tolist()
    dtype = next(model.parameters()).dtype
    return {
        "input_ids": torch.tensor([ids], device=device),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
        "pixel_values": torch.randn(n_img, 3, 336, 336, generator=g).to(device, dtype),
    }


def prefill(model: Any, method: str, inputs: dict[str, torch.Tensor]) -> tuple[Any, int]:
    """Batch-1 cache after the prompt, and the next token."""
    from transformers import DynamicCache

    cfg = METHODS[method]
    use_packed(model, None, "sdpa")  # prefill as the model would (SDPA over 16-bit K/V)
    cache = (
        DynamicCache(config=model.config) if cfg is None else api.build_cache(model, make_policy(cfg), inputs)
    )
    with api.pivot_detection(model, cache), torch.inference_mode():
        out = model(**inputs, **{api.cache_kwarg(): cache}, use_cache=True, logits_to_keep=1)
        if isinstance(cache, AKVQCache):
            # quantize the prompt now, at batch 1 (as the CPU benchmark's first step does): the cache defers it to
            # the next update, and copying it along the batch first would hold the whole prompt in 16 bits at
            # batch B (the first GPU run measured that peak, not the method's)
            cache.settle()
    if isinstance(cache, AKVQCache):
        use_packed(model, cache, "auto")  # decode through the packed path (Triton on CUDA)
    return cache, int(out.logits[0, -1].argmax())


def kv_bytes(cache: Any) -> int:
    if isinstance(cache, AKVQCache):
        return int(cache.memory_report().total_bytes)
    return int(sum(lay.keys.nbytes + lay.values.nbytes for lay in cache.layers))


def paths_used(cache: Any, cuda: bool) -> str:
    """The decode path of each distinct layer kind (checks that the kernel, not a fallback, reads the cache)."""
    if not isinstance(cache, AKVQCache):
        return "sdpa"
    names = {select(cache.attention, lay.k, lay.v, cuda).name for lay in cache.layers}
    return "+".join(sorted(names))


def flash_sdpa(device: str) -> Any:
    """SDPA's FlashAttention kernel for the 16-bit reads (the fp16 control, and the packed layers' windows):
    torch 2.11 picked cuDNN's on the H200, whose host side cost ~1.2 ms a call as the KV length changed every
    step (first GPU run's profile), 40 of fp16's 76 ms a step at batch 28."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


class Bench:
    def __init__(self, model: Any, device: str, steps: int, log: Any) -> None:
        self.model, self.device, self.steps, self.log = model, device, steps, log
        self.weights = sum(p.nbytes for p in model.parameters())

    def _reset(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def point(self, method: str, inputs: dict[str, torch.Tensor], batch: int) -> dict[str, Any]:
        self._reset()
        cuda = self.device.startswith("cuda")
        rec: dict[str, Any] = {"method": method, "prompt": int(inputs["input_ids"].shape[1]), "batch": batch}
        try:
            t = time.perf_counter()
            cache, nxt = prefill(self.model, method, inputs)
            rec["prefill_s"] = time.perf_counter() - t
            if batch > 1:
                cache.batch_repeat_interleave(batch)
            copied = kv_bytes(cache)
            ids = torch.full((batch, 1), nxt, device=self.device)
            with flash_sdpa(self.device):
                walls, _ = decode_steps(self.model, cache, ids, self.steps + 1, self.device)
            rec["kv_bytes"] = kv_bytes(cache)  # after the decode steps: the prompt is quantized by now
            rec["kv_bytes_per_token"] = rec["kv_bytes"] / (batch * cache.get_seq_length())
            rec["path"] = paths_used(cache, cuda)
            rec["s_per_step"] = sum(walls[1:]) / len(walls[1:])
            rec["tokens_per_s"] = batch / rec["s_per_step"]
            if cuda:  # allocated, as akvq.runner.execute.peak_memory: reserved also holds the caching
                # allocator's free blocks (DynamicCache's growing torch.cat leaves many), which it would release
                # and retry with before failing on a smaller card
                rec["peak_bytes"] = int(torch.cuda.max_memory_allocated())
                rec["peak_reserved"] = int(torch.cuda.max_memory_reserved())
            else:  # the CPU check's stand-in: weights + the most KV bytes held (after the copy, or at the end)
                rec["peak_bytes"] = self.weights + max(copied, rec["kv_bytes"])
            del cache
        except torch.OutOfMemoryError as e:
            rec.update(oom=True, peak_bytes=None, error=str(e)[:200])
        self._reset()
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()
        print(
            f"  {method:6s} prompt {rec['prompt']:5d} batch {batch:5d}: "
            + (
                "OOM"
                if rec.get("oom")
                else f"peak {rec['peak_bytes'] / GiB:7.2f} GiB, {rec['tokens_per_s']:9.1f} tok/s, {rec['path']}"
            ),
            flush=True,
        )
        return rec


def profile(model: Any, device: str, method: str, length: int, batch: int, steps: int = 2) -> None:
    """Where one decode step's time goes (torch.profiler over `steps` steps after two warm-ups): printed."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    inputs = prompt(model, length, device)
    cache, nxt = prefill(model, method, inputs)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    ids = torch.full((batch, 1), nxt, device=device)
    with flash_sdpa(device):
        decode_steps(model, cache, ids, 2, device)
    with HostSyncs() as syncs, flash_sdpa(device):  # reads back to the host in one step, by site
        decode_steps(model, cache, ids, 1, device)
    print(f"== host syncs in one decode step: {syncs.total}", flush=True)
    for site, n in syncs.by_site.most_common(8):
        print(f"   {n:5d} {site}", flush=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with prof(activities=acts) as p, flash_sdpa(device):
        walls, _ = decode_steps(model, cache, ids, steps, device)
    print(
        f"== profile {method} prompt {length} batch {batch}: {sum(walls) / steps * 1e3:.1f} ms a step",
        flush=True,
    )
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    print(p.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=60), flush=True)
    print(
        p.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60), flush=True
    )
    del cache
    gc.collect()


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    model = build_model(args.tiny, device)
    print(f"model built in {time.perf_counter() - t0:.1f} s on {device}", flush=True)
    for spec in filter(None, args.profile.split(",")):  # method:prompt:batch
        m, length, b = spec.split(":")
        profile(model, device, m, int(length), int(b))
    lengths = [int(x) for x in args.prompts.split(",")]
    budgets = [float(x) for x in args.budgets.split(",")]
    rows: list[dict[str, Any]] = []
    with open(out / "table4_points.jsonl", "a") as log:
        bench = Bench(model, device, args.steps, log)
        print(f"weights {bench.weights / GiB:.2f} GiB", flush=True)
        for length in lengths:
            inputs = prompt(model, length, device)
            seen: dict[tuple[str, int], dict[str, Any]] = {}

            def measure(
                method: str,
                b: int,
                inputs: dict[str, torch.Tensor] = inputs,
                seen: dict[tuple[str, int], dict[str, Any]] = seen,
            ) -> dict[str, Any]:
                if (method, b) not in seen:
                    seen[(method, b)] = bench.point(method, inputs, b)
                return seen[(method, b)]

            for method in METHODS:
                first = measure(method, 1)
                per_seq = first["kv_bytes"] if not first.get("oom") else GiB
                for gib in budgets:
                    if time.perf_counter() - t0 > args.deadline_s:
                        print(f"deadline {args.deadline_s} s reached: stopping", flush=True)
                        break
                    res = largest_batch(
                        lambda b, m=method: Point(b, measure(m, b)["peak_bytes"]),
                        int(gib * GiB),
                        Point(1, first["peak_bytes"]),
                        per_seq,
                        cap=args.cap,
                        max_points=3,
                        tolerance=args.tolerance,
                        max_total=args.max_total,
                    )
                    best = measure(method, res.batch) if res.batch else {}
                    rows.append(
                        {
                            "prompt": length,
                            "method": method,
                            "budget_gib": gib,
                            "largest_batch": res.batch,
                            "next_failing": res.above,
                            "capped": res.capped,
                            "kv_bytes_per_token": first.get("kv_bytes_per_token"),
                            "tokens_per_s": best.get("tokens_per_s"),
                            "peak_gib": (best.get("peak_bytes") or 0) / GiB,
                            "path": best.get("path"),
                        }
                    )
            for gib in budgets:  # every method at fp16's largest batch under this budget
                ref = next(
                    (
                        r
                        for r in rows
                        if r["prompt"] == length and r["method"] == "fp16" and r["budget_gib"] == gib
                    ),
                    None,
                )
                if ref is None or not ref["largest_batch"]:
                    continue
                for r in rows:
                    if r["prompt"] == length and r["budget_gib"] == gib:
                        p = measure(r["method"], ref["largest_batch"])
                        r["peak_gib_at_fp16_batch"] = (p.get("peak_bytes") or 0) / GiB
                        r["tokens_per_s_at_fp16_batch"] = p.get("tokens_per_s")
    with open(out / "table4.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    md = table(rows, device, args)
    write_atomic(out / "table4.md", md)
    print(md, flush=True)


def _x(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def table(rows: list[dict[str, Any]], device: str, args: argparse.Namespace) -> str:
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    lines = [
        f"### Table IV layout: LLaVA-1.5-7B config, **random fp16 weights** (throughput and memory do not depend on "
        f"the values), {name}",
        "",
        f"`python scripts/gpu_table4.py --prompts {args.prompts} --budgets {args.budgets} --steps {args.steps}`;"
        " peak = the most bytes allocated at once (model included; torch.cuda.max_memory_allocated); tok/s = decode steps after one warm-up.",
        "",
        "| prompt | budget | method | KV B/token | largest batch (x fp16) | tok/s there (x fp16) | peak GiB @ fp16's"
        " batch (fp16 / this) | tok/s @ fp16's batch (x fp16) | decode path |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = next(
            x
            for x in rows
            if x["prompt"] == r["prompt"] and x["budget_gib"] == r["budget_gib"] and x["method"] == "fp16"
        )
        lb = r["largest_batch"]
        lines.append(
            f"| {r['prompt']} | {r['budget_gib']:g} GiB | {r['method']} | {r['kv_bytes_per_token'] or 0:.0f} | "
            f"{lb}{'+' if r['capped'] else ''} ({_x(lb, ref['largest_batch'])}) | "
            f"{r['tokens_per_s'] or 0:.1f} ({_x(r['tokens_per_s'], ref['tokens_per_s'])}) | "
            f"{r.get('peak_gib_at_fp16_batch', math.nan):.2f} "
            f"({_x(ref.get('peak_gib_at_fp16_batch'), r.get('peak_gib_at_fp16_batch'))}) | "
            f"{r.get('tokens_per_s_at_fp16_batch') or 0:.1f} "
            f"({_x(r.get('tokens_per_s_at_fp16_batch'), ref.get('tokens_per_s_at_fp16_batch'))}) | {r['path']} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="a tiny config of the same layout (a CPU check)")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--prompts", default="640,8192", help="prompt lengths in tokens (half images, at least one)"
    )
    p.add_argument(
        "--budgets",
        default=None,
        help="GiB (default 32,80; with --tiny 0.25,0.5, which a CPU's memory holds)",
    )
    p.add_argument("--steps", type=int, default=4, help="timed decode steps a point, after one warm-up")
    p.add_argument("--cap", type=int, default=2048)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--profile", default="", help="method:prompt:batch,... profiled first (torch.profiler)")
    p.add_argument("--max-total", type=int, default=10, help="points per search at most")
    p.add_argument("--deadline-s", type=float, default=480.0, help="no new search starts after this")
    args = p.parse_args()
    # the paper's V100 and an 80 GB card; the tiny model on a CPU: budgets its RAM holds (at 32 GiB, fp16's 8K
    # search held ~24 GiB and the kernel killed it on a 24 GiB machine)
    if args.budgets is None:
        args.budgets = "0.25,0.5" if args.tiny else "32,80"
    run(args)


if __name__ == "__main__":
    main()
