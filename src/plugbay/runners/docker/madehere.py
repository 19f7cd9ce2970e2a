"""The local record of the containers plugbay's runners created: the proof a sweep asks before it removes one.

A container's labels are anyone's to write (``docker run --label plugbay.managed=true ...``), and are inherited
as they are by every container of an image ``docker commit`` made of a plugbay container: labels naming a dead
session prove nothing about who made the container. So a DockerRunner records the id the engine gave its
container, in a folder private to this user, right after the create; the sweep removes only containers whose
id is recorded there (ids are the engine's random 256 bits: no label can name its way into the record), and
drops the record with the container (as a runner's kill() does). A container removed without plugbay (``docker
rm -f``, ``docker system prune``, an engine reset) leaves its record: a sweep drops a record once it is older
than the sweep's grace, its host process no longer runs, and the engine says no such container exists
(stale_records).

The folder is ``plugbay-made-UID`` under the user's ~/.cache (it survives a reboot, as containers do), or
under /tmp when there is none; each is used only when it is this user's and mode 0700, and removed once
its last record goes. A sweep run as
another user than the host's finds no record, and leaves those containers alone.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Collection
from pathlib import Path

from plugbay.runners.procclaims import home_cache, private_folder, write_session_record
from plugbay.runners.session import session_alive

_log = logging.getLogger("plugbay.runners.docker")
_FULL_ID = re.compile(r"[0-9a-f]{64}", re.ASCII)


def records_roots() -> list[Path]:
    """Where this user's records are (the first that can be made is written; all are read)."""
    uid = os.getuid()
    return [Path(base) / f"plugbay-made-{uid}" for base in (*home_cache(uid), "/tmp")]


def _writable_roots() -> list[Path]:
    """The roots whose parent exists (a home without ~/.cache is not given one: /tmp serves)."""
    return [root for root in records_roots() if root.parent.is_dir()]


def record_made(container_id: str) -> bool:
    """Record that this process created ``container_id`` (best effort: False, with a warning, when no
    private folder could hold it; a sweep then leaves that container to ``docker rm -f``)."""
    if not _FULL_ID.fullmatch(container_id):
        return False
    for root in _writable_roots():
        if write_session_record(root, None, container_id):
            return True
    _log.warning("no record of container %s could be written (no private folder of this user at %s): a sweep"
                 " will not remove it if this host dies; remove it then with `docker rm -f %s`", container_id[:12],
                 ", ".join(str(root) for root in records_roots()), container_id[:12])
    return False


def made_here(container_id: str) -> bool:
    """Whether a runner of this user on this machine recorded that it created ``container_id``."""
    if not _FULL_ID.fullmatch(container_id):
        return False
    return any(private_folder(root) and (root / container_id).is_file() for root in records_roots())


def forget_made(container_id: str) -> None:
    """Drop the record of a container that was removed."""
    if not _FULL_ID.fullmatch(container_id):
        return
    for root in records_roots():
        if private_folder(root):
            (root / container_id).unlink(missing_ok=True)
            try:
                root.rmdir()  # the last record gone: no folder left behind in the user's home or /tmp
            except OSError:
                pass  # other records (or a record being written) keep it


def stale_records(older_than: float, skip: Collection[str], limit: int) -> list[str]:
    """The ids of at most ``limit`` records (oldest first) written at least ``older_than`` seconds ago, but those
    in ``skip`` (containers the caller saw) and those of a host process that still runs (its runner's kill drops
    its own): each a record the sweep may drop once the engine says its container does not exist."""
    now = time.time()
    found: list[tuple[float, str]] = []
    for root in records_roots():
        if not private_folder(root):
            continue
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for entry in entries:
            if not _FULL_ID.fullmatch(entry.name) or entry.name in skip:
                continue
            try:
                written = entry.stat(follow_symlinks=False).st_mtime
                session, _, start = Path(entry.path).read_text()[:200].strip().partition(".")
            except OSError:
                continue  # dropped meanwhile
            if now - written >= older_than and not session_alive(session, start):
                found.append((written, entry.name))
    return [name for _, name in sorted(found)[:limit]]
