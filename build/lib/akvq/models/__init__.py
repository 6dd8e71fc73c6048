"""Models: families (`families/`, one module each), loading sources (`sources/`, one module each), specs, prompts."""

from akvq.models.loading import is_vlm, load_model, validate_spec
from akvq.models.prompting import build_inputs
from akvq.models.registry import FAMILIES, decoder_layers, family_of, get_family, text_config
from akvq.models.smollm2 import smollm2_location
from akvq.models.sources.tiny import build_tiny
from akvq.models.spec import Loaded, ModelSpec

__all__ = [
    "FAMILIES",
    "Loaded",
    "ModelSpec",
    "build_inputs",
    "build_tiny",
    "decoder_layers",
    "family_of",
    "get_family",
    "is_vlm",
    "load_model",
    "smollm2_location",
    "text_config",
    "validate_spec",
]
