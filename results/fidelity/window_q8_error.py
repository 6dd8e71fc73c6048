"""The 8-bit window's rounding error on SmolLM2-135M's real K/V, per token and head (one scale per 64 channels)
against llama.cpp's q8_0 blocks (one per 32): which group `window_bits: 8` uses (docs/design.md).

python results/fidelity/window_q8_error.py  (one 4096-token window of the ppl task's text, every layer)"""

from __future__ import annotations

import torch
import yaml
from transformers import DynamicCache

from akvq import api
from akvq.models.loading import load_model
from akvq.paths import CONFIG_DIR
from akvq.quant.q8 import dequantize_q8, quantize_q8
from akvq.tasks.text import corpus_ids, windows


def main() -> None:
    torch.set_num_threads(1)
    spec = yaml.safe_load((CONFIG_DIR / "model" / "smollm2-135m.yaml").read_text())
    loaded = load_model(spec)
    ids = torch.tensor([windows(corpus_ids(loaded.tokenizer), 4096, 1)[0]])
    cache = DynamicCache(config=loaded.model.config)
    with torch.inference_mode():
        loaded.model(input_ids=ids, **{api.cache_kwarg(): cache}, use_cache=True)
    print("tensor  group  rel. RMS error  max |err| / max |x|  bits per element")
    for name, idx in (("K", 0), ("V", 1)):
        xs = [layer.keys if idx == 0 else layer.values for layer in cache.layers]
        for g in (64, 32):
            num = den = 0.0
            worst = 0.0
            for x in xs:
                x = x.float().half().float()  # what a 16-bit window would hold
                err = x - dequantize_q8(quantize_q8(x, g), x.shape[-1], g, torch.float32)
                num += float(err.pow(2).sum())
                den += float(x.pow(2).sum())
                worst = max(worst, float(err.abs().amax() / x.abs().amax()))
            print(
                f"{name}       {g:5d}  {(num / den) ** 0.5:.3e}      {worst:.3e}            {8 + 16 / g:.3f}"
            )


if __name__ == "__main__":
    main()
