"""The error of a transcode this instance cannot have (a dead letter saying why)."""

from __future__ import annotations


class TranscodeError(ValueError):
    """The instance cannot be written in the requested syntax; the message says what to do."""
