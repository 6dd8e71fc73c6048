"""Errors raised before any model loads, so a bad config costs seconds, not a model download."""


class ConfigError(ValueError):
    """A configuration that cannot work (bits out of range, unknown policy, bad group size, ...)."""


class UnsupportedModelError(ValueError):
    """A model family the saliency/role code does not know."""


class MissingDataError(FileNotFoundError):
    """A dataset or weights path that is not there, with instructions on how to get it."""
