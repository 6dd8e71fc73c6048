"""Saliency signals for the cache: token roles, pivot tokens, per-layer TSA/PSA patterns (and their profiler)."""

from akvq.saliency.patterns import layer_pattern, load_layer_pattern
from akvq.saliency.pivots import PivotDetector, detect_pivots
from akvq.saliency.roles import vision_mask

__all__ = ["PivotDetector", "detect_pivots", "layer_pattern", "load_layer_pattern", "vision_mask"]
