"""Exceptions that are part of the public contract."""


class UnsupportedModelError(TypeError):
    """Raised when `prune` meets a model family it has no patch for."""
