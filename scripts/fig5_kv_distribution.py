"""Extract real K/V from SmolLM2-135M-Instruct and summarize their per-channel distribution before and after
the Walsh-Hadamard transform (paper Fig. 5), then draw the figure.

Why real weights: the claim is about outlier channels in real keys (post-RoPE, as the cache stores them) and
values; random weights have none. The text is CPython's `pydoc_data.topics` (real English, ships offline).

    python scripts/fig5_kv_distribution.py [--tokens 1024] [--layers 0,10,20,29] [--out results/figures]

Writes into --out: data/fig5_kv_stats.csv (per-channel min/percentiles/max of the drawn layers; what
`scripts/make_artifacts.py` redraws Fig. 5 from), data/fig5_kv_summary.csv (every layer: outlier ratio and
2-bit / 4-bit per-token quantization error before and after WHT) and fig5_kv_distribution.{png,pdf,csv}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from akvq.artifacts import figures, style  # noqa: E402
from akvq.quant.hadamard import fwht  # noqa: E402
from akvq.quant.uniform import fake_quantize  # noqa: E402

QUANTILES = {"p01": 0.01, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p99": 0.99}


def real_text() -> str:
    """CPython's help topics, in sorted topic order (deterministic, offline, real prose and code)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def load_smollm2() -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM

    from akvq.models.smollm2 import smollm2_location, smollm2_tokenizer

    d, f = smollm2_location()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    return model.eval(), smollm2_tokenizer()


def cache_kv(cache: object, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, V) of one layer, [B, H_kv, T, D], from a transformers cache of any recent layout."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[layer].keys, layers[layer].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[layer], cache.value_cache[layer]
    k, v = cache[layer][:2]  # legacy tuple of tuples
    return k, v


def channel_stats(x: torch.Tensor) -> dict[str, np.ndarray]:
    """x [H, T, D] -> per channel (H*D, head-major) min, quantiles and max over tokens."""
    flat = x.permute(1, 0, 2).reshape(x.shape[1], -1).float()  # [T, H*D]
    out = {"min": flat.min(0).values.numpy(), "max": flat.max(0).values.numpy()}
    q = torch.quantile(flat, torch.tensor(list(QUANTILES.values())), dim=0).numpy()
    out.update({k: q[i] for i, k in enumerate(QUANTILES)})
    return out


def quant_error(x: torch.Tensor, bits: int = 2) -> float:
    """Relative MSE of per-token asymmetric quantization, one group per head (what a 2-bit cache does)."""
    xq = fake_quantize(x.float(), bits, group_size=x.shape[-1])
    return float(((x - xq) ** 2).sum() / (x**2).sum())


def outlier_ratio(x: torch.Tensor) -> float:
    """max over channels of per-channel |x|max divided by the median channel's: >> 1 means outlier channels."""
    amax = x.abs().amax(dim=1).reshape(-1)  # [H*D]
    return float(amax.max() / amax.median())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1024, help="prompt length (tokens of real text)")
    ap.add_argument("--layers", default="0,10,20,29", help="layers drawn in the figure (all are summarized)")
    ap.add_argument("--out", default=str(REPO / "results" / "figures"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "data").mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model, tok = load_smollm2()
    ids = tok(real_text(), return_tensors="pt").input_ids[:, : args.tokens]
    with torch.no_grad():
        res = model(input_ids=ids, use_cache=True)
    n_layers = model.config.num_hidden_layers
    cache = getattr(res, "cache", None)
    cache = res.past_key_values if cache is None else cache
    layers = [int(x) for x in args.layers.split(",") if x.strip()]
    print(f"forward over {ids.shape[1]} tokens, {n_layers} layers in {time.perf_counter() - t0:.1f}s")

    stat_rows, summary = [], []
    for layer in range(n_layers):
        k, v = cache_kv(cache, layer)
        for kind, x in (("key", k[0]), ("value", v[0])):
            for tr, y in (("none", x), ("wht", fwht(x.float()))):
                if layer in layers:  # per-channel stats only where drawn: every layer would be ~2 MB of CSV
                    st = channel_stats(y)
                    n = len(st["min"])
                    stat_rows.append(pd.DataFrame({"model": "smollm2-135m", "layer": layer, "kind": kind,
                                                   "transform": tr, "head_dim": x.shape[-1], "channel": np.arange(n),
                                                   **st}))  # fmt: skip
                summary.append({"model": "smollm2-135m", "layer": layer, "kind": kind, "transform": tr,
                                "absmax": float(y.abs().max()), "outlier_ratio": outlier_ratio(y),
                                "rel_mse_2bit_per_token": quant_error(y), "rel_mse_4bit_per_token": quant_error(y, 4),
                                "tokens": int(ids.shape[1])})  # fmt: skip
    stats_csv = out / "data" / "fig5_kv_stats.csv"
    pd.concat(stat_rows, ignore_index=True).to_csv(stats_csv, index=False, float_format="%.5g")
    stats = pd.read_csv(stats_csv)  # draw what make_artifacts.py redraws from, so both give the same files
    summ = pd.DataFrame(summary)
    summ.to_csv(out / "data" / "fig5_kv_summary.csv", index=False, float_format="%.5g")

    made = figures.fig5(stats, layers)
    assert made is not None
    paths = style.save(*made, out, "fig5_kv_distribution")
    piv = summ.pivot_table(
        index="kind", columns="transform", values=["outlier_ratio", "rel_mse_2bit_per_token"], aggfunc="mean"
    )
    print("mean over layers:\n" + piv.to_string(float_format=lambda x: f"{x:.4g}"))
    print(
        "wrote",
        *[str(p) for p in paths],
        out / "data" / "fig5_kv_stats.csv",
        out / "data" / "fig5_kv_summary.csv",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
