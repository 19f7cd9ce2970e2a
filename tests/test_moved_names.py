"""Names that moved to modules of their own stay importable from their old homes (re-exports),
and are the same objects there, so user code and the public export table keep working."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    # (old home, name, new home)
    ("plugbay.core.host.client", "cleanup_clients", "plugbay.core.host.live"),
    ("plugbay", "cleanup_clients", "plugbay.core.host.live"),
    ("plugbay.core.resilience.supervisor", "ClientMaker", "plugbay.core.resilience.sources"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_a_moved_name_is_the_same_object_at_its_old_home(old: str, name: str, new: str) -> None:
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)

