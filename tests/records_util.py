"""The file of a container record (src/plugbay/runners/docker/madehere.py), for tests that look at one."""

from __future__ import annotations

from pathlib import Path

from plugbay.runners.docker.madehere import records_roots


def record_of(container_id: str) -> Path:
    """The one record file of ``container_id`` (a test fails if there is none, or more than one)."""
    (record,) = [root / container_id for root in records_roots() if (root / container_id).is_file()]
    return record
