"""The caller's own error, as a request iterator raises it: shared by the sync and async request-iterator tests."""

from __future__ import annotations


class SourceBroke(Exception):
    """The caller's own error, raised by its request iterator."""


def broke() -> SourceBroke:
    """The caller's error, raised from the error under it: both are the caller's to see."""
    try:
        raise OSError(5, "Input/output error")
    except OSError as exc:
        try:
            raise SourceBroke("the file being streamed could not be read") from exc
        except SourceBroke as raised:
            return raised
