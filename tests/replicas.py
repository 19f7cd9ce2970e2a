"""Two network-mode replicas for a test, each stopped after, even when the second one failed to start."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar


class Stoppable(Protocol):
    def stop(self) -> Any: ...


R = TypeVar("R", bound=Stoppable)


@contextmanager
def replica_pair(make: Callable[[Path], R], folder: Path) -> Iterator[list[R]]:
    """``make(folder / "a")`` and ``make(folder / "b")``; both stopped when the block ends."""
    reps: list[R] = []
    try:
        for name in ("a", "b"):
            reps.append(make(folder / name))
        yield reps
    finally:
        for rep in reps:
            rep.stop()
