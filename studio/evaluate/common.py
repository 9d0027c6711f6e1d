"""What the evaluations share."""

from __future__ import annotations


class DataError(ValueError):
    """A prompt file, or an output folder, that cannot be evaluated as given."""
