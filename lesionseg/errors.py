"""Typed errors raised at the library's boundaries.

Each message says what is wrong and how to fix it. The service maps :class:`InputError` to
HTTP 400 and everything else to a server-side error.
"""

from __future__ import annotations


class LesionSegError(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(LesionSegError, ValueError):
    """The caller's input is unusable (maps to HTTP 400)."""


class InvalidImageError(InputError):
    """The image bytes are empty, unreadable, truncated or of an unsupported kind."""


class ImageTooLargeError(InvalidImageError):
    """The upload or its decoded pixel count is over the configured limit."""


class InvalidBoxesError(InputError):
    """Box prompts are malformed: wrong shape, not finite, empty or outside the image."""


class ModelLoadError(LesionSegError):
    """Weights are missing, fail their checksum or do not fit the model."""


class DataFetchError(LesionSegError):
    """A data package could not be fetched or failed its checksum."""
