"""Hugging Face models: a hub id or a local directory in `path`, loaded with the family's transformers class."""

from __future__ import annotations

import os
from typing import Any

from akvq.errors import ConfigError, MissingDataError
from akvq.models.registry import family_of, get_family
from akvq.models.sources import Source
from akvq.models.spec import Loaded, ModelSpec, prepare_tokenizer, resolve_path, torch_dtype


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (`org/name`, or a legacy bare name that is not on disk)."""
    return os.path.exists(path) or path.startswith(("/", ".", "~")) or path.count("/") > 1


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub's endpoint: without network, huggingface_hub retries five times (about
    25-60 s) before failing, after the model may have loaded. The one probe validate and pre-flight ask."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
    except Exception:  # noqa: BLE001
        url = urlparse("https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def weights_hint(spec: ModelSpec) -> str:
    """How to get missing weights: the real hub id when there is one, and how each entry point takes a path."""
    hub = spec.path if spec.path and not _looks_local(spec.path) else None
    get = f"`hf download {hub} --local-dir DIR`" if hub else "copy the weights to a folder DIR"
    return (
        f"On a machine with network run {get}, then point the model's path at DIR (run.py: `model.path=DIR`; "
        f"lmms-eval: `--model_args pretrained=DIR`; scripts/profile_layers.py: `--model` a YAML with `path: DIR`)."
    )


def _missing(spec: ModelSpec, path: str, why: str) -> MissingDataError:
    return MissingDataError(f"model {spec.name!r}: cannot load {path!r} ({why}). {weights_hint(spec)}")


def _check_available(spec: ModelSpec, path: str) -> None:
    """Fail fast with one clear message when weights are neither on disk nor reachable."""
    if _looks_local(path):
        if not os.path.exists(path):
            raise _missing(spec, path, "local path does not exist")
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # an invalid repo id
        cached = None
    if isinstance(cached, str):
        return
    if _hub_offline():
        raise _missing(spec, path, "not in the local Hugging Face cache and HF_HUB_OFFLINE is set")


def check(spec: ModelSpec) -> None:
    if not spec.path:
        raise ConfigError(f"model {spec.name!r}: source 'hub' needs `path` (a hub id or a local directory)")


def family(spec: ModelSpec) -> str | None:
    """The declared family, else the one of a config already on disk (no download); None when unknown."""
    if spec.family is not None:
        return spec.family
    try:
        import transformers as tf

        path = resolve_path(spec)
        cfg = tf.AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=spec.trust_remote_code
        )
        return family_of(cfg)
    except Exception:  # noqa: BLE001 - not on disk yet or not a supported model: known after loading
        return None


def load(spec: ModelSpec) -> Loaded:
    import transformers as tf

    path = resolve_path(spec)
    assert path is not None
    _check_available(spec, path)
    common: dict[str, Any] = {"trust_remote_code": True} if spec.trust_remote_code else {}
    try:
        fam = get_family(spec.family or family_of(tf.AutoConfig.from_pretrained(path, **common)))
        kwargs: dict[str, Any] = dict(
            common, dtype=torch_dtype(spec), attn_implementation=spec.attn_implementation
        )
        if spec.device_map is not None:
            kwargs["device_map"] = spec.device_map  # accelerate splits layers over the visible GPUs
        model = getattr(tf, fam.hub_class).from_pretrained(path, **kwargs)
        if fam.is_vlm:
            processor = tf.AutoProcessor.from_pretrained(path, **common)
            tok = prepare_tokenizer(processor.tokenizer)
        else:
            processor = None
            tok = prepare_tokenizer(tf.AutoTokenizer.from_pretrained(path, **common))
    except OSError as exc:
        raise _missing(
            spec, path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    model.eval()
    actual = family_of(model)
    if spec.family is not None and actual != spec.family:
        raise ConfigError(
            f"model {spec.name!r}: config says family {spec.family!r} but the weights are {actual!r}"
        )
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return Loaded(model=model, tokenizer=tok, processor=processor, family=actual, spec=spec)


SOURCE = Source(name="hub", load=load, check=check, family=family, places=True)
