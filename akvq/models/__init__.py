"""Model loading (hub, GGUF, tiny random), the family registry and prompt building."""

from akvq.models.loading import Loaded, ModelSpec, load_model, validate_spec
from akvq.models.prompting import build_inputs
from akvq.models.registry import FAMILIES, decoder_layers, family_of, text_config
from akvq.models.smollm2 import smollm2_location
from akvq.models.tiny import TINY_KINDS, build_tiny

__all__ = [
    "FAMILIES",
    "TINY_KINDS",
    "Loaded",
    "ModelSpec",
    "build_inputs",
    "build_tiny",
    "decoder_layers",
    "family_of",
    "load_model",
    "smollm2_location",
    "text_config",
    "validate_spec",
]
