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

Each record names the engine that made its container (engine_identity: the engine's own ID, and its data
root, as ``docker info`` tells them), and the machine its host ran on (session.machine_identity: a cloned VM's
engine may share both ID and data root, and only the host's own machine's /proc proves that host gone), in a
sibling file (NAME.made) that earlier releases do not read. Only that engine's "no such container" proves the
container gone:
a sweep run against another engine (a cron job without the user's DOCKER_HOST, a home folder shared by
machines) would otherwise take the records of the first engine's containers for stale ones and drop them,
leaving those containers to ``docker rm -f``. A record without an engine (written by an earlier release, or
for an engine that tells no ID) is that engine's once it lists the container (the sweep then notes the
engine in it), and is never dropped for an engine's "no such container".

The folder is ``plugbay-made-UID`` under the user's ~/.cache (it survives a reboot, as containers do), or
under /tmp when there is none; each is used only when it is this user's and mode 0700, and removed once
its last record goes. A sweep run as
another user than the host's finds no record, and leaves those containers alone.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugbay.errors import RunnerError
from plugbay.runners.docker.connect import engine_call
from plugbay.runners.procclaims import home_cache, private_folder, write_session_record
from plugbay.runners.session import machine_identity, session_alive

_log = logging.getLogger("plugbay.runners.docker")
_FULL_ID = re.compile(r"[0-9a-f]{64}", re.ASCII)
# docker info's ID (a key's fingerprint in 20.10, a UUID since 23.0) and DockerRootDir, as far as a record takes
# them, written and read: the engine's answer is not trusted to be one line of sane text. Printable ASCII only,
# no space at either end: a record read back (by lines, as it was written) names what was written
_ENGINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,199}", re.ASCII)
_ROOT_DIR = re.compile(r"/(?:[\x20-\x7e]{0,1022}[\x21-\x7e])?", re.ASCII)
_MACHINE = re.compile(r"[0-9a-f]{32}", re.ASCII)
_ENGINE_LINE, _MACHINE_LINE = "engine ", "machine "
# a record's engine and machine are in a sibling file (NAME.made): a record's own file stays the one line of its
# host's session that earlier releases read whole as "session.start" (a second line there made them take a live
# host for a gone one). Those releases list only NAME files, and leave a sibling when they drop a record
_SIBLING = ".made"
_RECORD_READ = 4096  # bytes of a record (or its sibling) read at most
_ORPHAN_AGE = 60.0  # a sibling whose record is gone is removed once this old (no race with a record being written)
# answers to /info that are no engine failing but a refusal a retry never gets past: 400 (the request itself
# refused) and 501 (not implemented: a proxy) are typed failures saying so; any other 4xx (401, 403, 404, 405:
# a socket proxy forbidding /info, a stand-in) is taken for "tells no ID"
_REFUSED_FAILING = (400, 501)


def engine_info(client: Any, again: str = "try again") -> dict[str, Any] | None:
    """The engine's ``docker info`` answer (one request), None when it refuses to give it (a 4xx but 400: a
    socket proxy that forbids /info, docker-socket-proxy's default, with 401, 403, 404 or 405; a stand-in). A
    400 or a 501 (a proxy that does not pass /info) is a RunnerError saying to allow GET /info on the proxy;
    any other 5xx (an engine failing) is a RunnerError saying to check the engine, as is an answer that is no
    JSON object; an engine it cannot reach is an EngineUnavailableError, as for any request. ``again``: what
    the message says to do once the engine is fixed."""
    from docker.errors import APIError

    try:
        info = engine_call(client.info, "read engine info (its ID)")
    except APIError as exc:
        status = exc.status_code or 0
        if 400 <= status < 500 and status not in _REFUSED_FAILING:
            _log.info("the Docker engine did not tell its ID (%s): records of its containers name no engine", exc)
            return None
        if status in _REFUSED_FAILING:  # the same answer each time: starting again does not help
            raise RunnerError(f"the Docker engine (or a socket proxy in front of it) refused docker info (HTTP"
                              f" {status}: {exc.explanation or exc}); plugbay records the engine's ID and data root"
                              " with each container it makes. Allow GET /info on the proxy (or point DOCKER_HOST"
                              f" at the engine itself), then {again}.") from exc
        # not taken for "tells no ID": a record naming no engine is one no sweep can judge; a failing engine
        # would fail the create next anyway, and a typed error is one a restart policy or the caller retries
        raise RunnerError(f"the Docker engine failed to answer docker info (its ID and data root, which plugbay"
                          f" records with each container it makes): {exc.explanation or exc}. Check the engine"
                          f" (`docker info`), then {again}.") from exc
    if not isinstance(info, dict):
        raise RunnerError(f"the Docker engine answered docker info with a {type(info).__name__}, not an object:"
                          " is DOCKER_HOST (or the client's base_url) a Docker engine's API?")
    return info


def identity_of(info: dict[str, Any] | None) -> str | None:
    """The identity of the engine whose ``docker info`` answer is ``info``, as records name it: its ID and its
    data root, or None when it tells no usable ID (``info`` None: it refused to answer).

    Not its address: one engine has many (a socket path, a tcp port, an ssh URL), and one address may lead to
    another engine tomorrow. The data root is in it because engines before 23.0 take their ID from
    /etc/docker/key.json: two engines on one machine (a rootful and a test one) may share it."""
    if info is None:
        return None
    ident, root = info.get("ID"), info.get("DockerRootDir")
    if not isinstance(ident, str) or not _ENGINE_ID.fullmatch(ident):
        return None
    return f"{ident} {root}" if isinstance(root, str) and _ROOT_DIR.fullmatch(root) else ident


def engine_identity(client: Any, again: str = "try again") -> str | None:
    """The identity of the engine ``client`` talks to (:func:`identity_of` its :func:`engine_info`). Asked
    each time (a runner's start, a sweep): an engine's address may lead to another engine by the next one."""
    return identity_of(engine_info(client, again))


def _valid_identity(text: str) -> str | None:
    """An engine identity read from a record, if it is one a record could have been written with."""
    ident, space, root = text.partition(" ")
    if not _ENGINE_ID.fullmatch(ident) or (space and not _ROOT_DIR.fullmatch(root)):
        return None
    return text


def describe_engine(identity: str | None) -> str:
    """An engine identity as messages name it: ``ID (data root)``."""
    if identity is None:
        return "an engine that tells no ID"
    ident, _, root = identity.partition(" ")
    return f"{ident} ({root})" if root else ident


def records_roots() -> list[Path]:
    """Where this user's records are (the first that can be made is written; all are read)."""
    uid = os.getuid()
    return [Path(base) / f"plugbay-made-{uid}" for base in (*home_cache(uid), "/tmp")]


def _writable_roots() -> list[Path]:
    """The roots whose parent exists (a home without ~/.cache is not given one: /tmp serves)."""
    return [root for root in records_roots() if root.parent.is_dir()]


def record_made(container_id: str, engine: str | None) -> bool:
    """Record that this process created ``container_id`` on the engine of identity ``engine``
    (:func:`engine_identity`, asked before the create), on this machine (best effort: False, with a warning,
    when no private folder could hold it; a sweep then leaves that container to ``docker rm -f``)."""
    if not _FULL_ID.fullmatch(container_id):
        return False
    for root in _writable_roots():
        if write_session_record(root, None, container_id):
            # the record first: one whose sibling is missing (a crash between) names no engine and no machine,
            # which no sweep judges by an engine's word
            _write_sibling(root / container_id, engine, machine_identity() or None)
            return True
    _log.warning("no record of container %s could be written (no private folder of this user at %s): a sweep"
                 " will not remove it if this host dies; remove it then with `docker rm -f %s`", container_id[:12],
                 ", ".join(str(root) for root in records_roots()), container_id[:12])
    return False


def _write_sibling(record: Path, engine: str | None, machine: str | None, written: float | None = None) -> None:
    """Write the engine and machine of ``record`` next to it, whole (a temp file renamed into place), while
    the record exists (``written``: the mtime to give it)."""
    lines = [f"{_ENGINE_LINE}{engine}"] if engine else []
    lines += [f"{_MACHINE_LINE}{machine}"] if machine else []
    if not lines:
        return
    tmp = record.parent / f".{record.name}{_SIBLING}.{secrets.token_hex(4)}"
    try:
        tmp.write_text("\n".join(lines) + "\n")
        if written is not None:
            os.utime(tmp, (written, written))
        if record.exists():
            os.replace(tmp, record.parent / f"{record.name}{_SIBLING}")
    except OSError as exc:
        _log.debug("could not note engine %s in the record of container %s: %s", engine, record.name[:12], exc)
    finally:
        tmp.unlink(missing_ok=True)


def made_here(container_id: str) -> bool:
    """Whether a runner of this user on this machine recorded that it created ``container_id``."""
    if not _FULL_ID.fullmatch(container_id):
        return False
    return any(private_folder(root) and (root / container_id).is_file() for root in records_roots())


def forget_made(container_id: str) -> None:
    """Drop the record of a container that was removed (its engine and machine with it)."""
    if not _FULL_ID.fullmatch(container_id):
        return
    for root in records_roots():
        if private_folder(root):
            (root / container_id).unlink(missing_ok=True)
            (root / f"{container_id}{_SIBLING}").unlink(missing_ok=True)
            try:
                root.rmdir()  # the last record gone: no folder left behind in the user's home or /tmp
            except OSError:
                pass  # other records (or a record being written) keep it


@dataclass(frozen=True)
class Record:
    """One record as read: the container's id, its host's session marker and start, the engine that made the
    container (None: not noted), the machine its host ran on (None: not noted, an earlier release's record),
    when it was written, and its file."""

    container_id: str
    session: str
    start: str
    engine: str | None
    written: float
    path: Path
    machine: str | None = None

    def elsewhere(self) -> bool:
        """Whether another machine's host wrote this record (a home folder shared by machines, a cloned VM
        whose engine shares ID and data root)."""
        return self.machine is not None and self.machine != machine_identity()

    def host_gone(self) -> bool:
        """Whether the host process that wrote this record is proven gone: this machine's /proc (its pid
        namespace) no longer shows it. Never for a record another machine's host wrote: this /proc says
        nothing of it."""
        return not self.elsewhere() and not session_alive(self.session, self.start)


def _read_head(path: str) -> list[str]:
    """The lines of at most _RECORD_READ bytes of ``path`` (OSError: unreadable, or dropped meanwhile), split
    as they were written (not splitlines(): a U+2028 is no line end of a record's); a byte no record holds reads
    as U+FFFD, which no pattern takes."""
    with open(path, "rb") as f:
        return f.read(_RECORD_READ).decode("ascii", errors="replace").split("\n")


def _noted(lines: list[str], prefix: str) -> str | None:
    return next((line[len(prefix):] for line in lines if line.startswith(prefix)), None)


def read_records(tidy: bool = False) -> list[Record]:
    """Every record of this user's, oldest first (those dropped while being read are not). ``tidy``: also
    remove the siblings whose record is gone (a sweep that is not a dry run; nothing else changes a file)."""
    found: list[Record] = []
    for root in records_roots():
        if not private_folder(root):
            continue
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        names = {entry.name for entry in entries}
        for entry in entries:
            if tidy and entry.name.endswith(_SIBLING) and _FULL_ID.fullmatch(entry.name[:-len(_SIBLING)]) \
                    and entry.name[:-len(_SIBLING)] not in names:
                _drop_orphan(entry)
            if not _FULL_ID.fullmatch(entry.name):
                continue
            try:
                written = entry.stat(follow_symlinks=False).st_mtime
                lines = _read_head(entry.path)
            except OSError:
                continue  # dropped meanwhile
            session, _, start = (lines[0] if lines else "").partition(".")
            noted = lines[1:]  # a record this release's development wrote, the engine on its second line
            try:  # opened whatever the listing said: record_made writes the sibling after the record
                noted = _read_head(f"{entry.path}{_SIBLING}")
            except OSError:
                pass
            engine, machine = _noted(noted, _ENGINE_LINE), _noted(noted, _MACHINE_LINE)
            found.append(Record(entry.name, session, start, _valid_identity(engine) if engine else None, written,
                                Path(entry.path), machine if machine and _MACHINE.fullmatch(machine) else None))
    return sorted(found, key=lambda record: record.written)


def _drop_orphan(entry: os.DirEntry[str]) -> None:
    """Remove a sibling whose record is gone (dropped by an earlier release, which knows no sibling): only a
    ``<container id>.made`` file, the name record_made gives one."""
    try:
        if time.time() - entry.stat(follow_symlinks=False).st_mtime >= _ORPHAN_AGE:
            os.unlink(entry.path)
    except OSError:
        pass


def note_engine(record: Record, engine: str) -> None:
    """Note ``engine`` in ``record`` (its container found there), keeping its machine and its age. A record
    dropped meanwhile keeps no sibling for long (a sweep removes it).

    The machine is read again from the sibling just before it is rewritten: ``record`` may have been read
    between record_made's record and its sibling (no machine then), and a machine line dropped is a cloned
    VM's record judged by this machine's /proc. A sibling that cannot be read is left as it is."""
    sibling = f"{record.path}{_SIBLING}"
    try:
        machine = _noted(_read_head(sibling), _MACHINE_LINE)
    except FileNotFoundError:
        machine = record.machine
    except OSError as exc:
        _log.debug("could not note engine %s in the record of container %s: %s", engine, record.container_id[:12],
                   exc)
        return
    _write_sibling(record.path, engine, machine if machine and _MACHINE.fullmatch(machine) else None,
                   record.written)


def stale_records(older_than: float, skip: Collection[str], tidy: bool = False,
                  elsewhere: dict[str, str] | None = None) -> list[Record]:
    """The records (oldest first) written at least ``older_than`` seconds ago, but those in ``skip``
    (containers the caller saw) and those of a host process that still runs (its runner's kill drops its own):
    each a record the sweep may drop once the engine that made its container says it does not exist.
    ``tidy``: as for read_records. ``elsewhere``: filled with the container id of each record as old, not in
    ``skip``, that another machine's host wrote (never stale here), and why it is kept."""
    now = time.time()
    old = [record for record in read_records(tidy) if record.container_id not in skip
           and now - record.written >= older_than]
    if elsewhere is not None:
        here = machine_identity() or "which has no /etc/machine-id"
        for record in old:
            if record.elsewhere():
                elsewhere[record.container_id] = (
                    f"record {record.path} kept: its host ran on machine {record.machine} (a hash of its"
                    f" /etc/machine-id), not this one ({here}), and only that machine's /proc proves it gone:"
                    " a sweep on that machine judges it")
    return [record for record in old if record.host_gone()]
