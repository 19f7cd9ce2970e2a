"""The Kubernetes stand-in's pod container labels, and its clean-up of the pod containers and emptyDir folders of
stand-ins that are gone (runtime.py's Docker backend calls remove_orphans() when it starts)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from typing import Any


# Each pod container names the stand-in that made it (plugbay's session labels: its session and start ticks, its
# machine, boot and pid namespace) and its emptyDir folder: a stand-in killed (SIGKILL, a crashed test run) cannot
# remove them itself, and the next one does once plugbay's session_gone() proves it gone.
OWNER_LABEL = "plugbay.standin.owner"
EMPTYDIR_LABEL = "plugbay.standin.emptydir"
RUN_LABEL = "plugbay.standin.run"
_RUN_MARK_NAME = "LEAKCHECK_RUN"  # tests/leakcheck.py's mark of the test run, inherited by what it starts
_EMPTYDIR_PREFIX = "plugbay-standin-emptydir-"
_PLUGBAY_LABELS = "plugbay."
_SYSTEM_TEMP = "/tmp"
_RUN_FOLDER = re.compile(r"plugbay-test-\d+")
_log = logging.getLogger("tests.kube_standin")
_OWNER = re.compile(r"(\d+-[0-9a-f]{12})\.(\d+)")


def owner_labels() -> dict[str, str]:
    """This stand-in's labels for a pod container it makes (plugbay's MANAGED left off: plugbay's own sweep
    takes a container with it for a runner's, and a stand-in's pod container is no runner's), and the test run's
    mark when a run gave one (tests/leakcheck.py: a stand-in in a process of its own labels its pods' containers
    with its own session, not the run's, and the run's leak check finds them by this mark)."""
    from plugbay.runners.session import MANAGED, host_session, managed_labels

    labels = {**{k: v for k, v in managed_labels().items() if k != MANAGED}, OWNER_LABEL: host_session()}
    run = os.environ.get(_RUN_MARK_NAME)
    if run:
        labels[RUN_LABEL] = run
    return labels


def _pod_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A pod's own labels as its container's, less plugbay's namespace: a pod labelled with the stand-in's
    owner or emptyDir label (or a plugbay session's) would name what a later stand-in removes."""
    return {k: v for k, v in labels.items() if not k.startswith(_PLUGBAY_LABELS)}


def _owner_gone(labels: Mapping[str, str]) -> bool:
    """Whether the stand-in that labelled a pod container is proven gone (plugbay's session_gone(): this
    machine, boot and pid namespace with its process ended); a label it cannot read, or another machine's or
    pid namespace's, is not a proof."""
    from plugbay.runners.session import HOST, HOST_PIDS, MACHINE, MANAGED, SESSION, SESSION_START, session_gone

    if MANAGED in labels:
        return False  # a runner's container (a stand-in's has no MANAGED): plugbay's own sweep judges it
    # The engine merges an image's LABELs into its containers' labels: an owner label only the image wrote would
    # name a gone stand-in on a live host's container. A stand-in writes its owner label and its session labels
    # together, so the owner label counts only where it is the session the container's creator wrote.
    owner_label = labels.get(OWNER_LABEL, "")
    if owner_label != f"{labels.get(SESSION)}.{labels.get(SESSION_START)}":
        return False
    owner = _OWNER.fullmatch(owner_label)
    if owner is None:
        return False
    return session_gone(labels.get(HOST), labels.get(HOST_PIDS), owner.group(1), owner.group(2),
                        labels.get(MACHINE))


def _temp_folder(parent: str) -> bool:
    """Whether ``parent`` is a temp folder a stand-in's emptyDir folders go in: this process's, the system's, or a
    test run's (tests/leakcheck.py gives each run TMPDIR=/tmp/plugbay-test-<pid>, a killed run's stand-in too).
    A run's folder is this user's, writable by no one else (as leakcheck.py makes it): a name in /tmp is anyone's
    to take, and a folder in another user's, or one anyone may write in, is not proven a stand-in's."""
    if parent in (tempfile.gettempdir(), _SYSTEM_TEMP):
        return True
    if os.path.dirname(parent) != _SYSTEM_TEMP or _RUN_FOLDER.fullmatch(os.path.basename(parent)) is None:
        return False
    try:
        st = os.lstat(parent)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _own_emptydir(path: str, container: Any) -> bool:
    """Whether ``path`` is the emptyDir folder a stand-in made for ``container``: in a temp folder, by its name,
    no link on the way, and the source of the container's own bind mounts (a label alone names any folder)."""
    if not (os.path.isabs(path) and os.path.realpath(path) == path and _temp_folder(os.path.dirname(path))
            and os.path.basename(path).startswith(_EMPTYDIR_PREFIX) and os.path.isdir(path)):
        return False
    binds = [m.get("Source") or "" for m in (container.attrs.get("Mounts") or []) if m.get("Type") == "bind"]
    return bool(binds) and all(os.path.dirname(source) == path for source in binds)


def remove_orphans(client: Any) -> list[str]:
    """Remove the pod containers (and emptyDir folders) of stand-ins that are gone; their ids."""
    import docker.errors

    removed = []
    for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}, ignore_removed=True):
        labels = container.labels or {}
        if not _owner_gone(labels):
            continue  # a live stand-in's (another test run's on this engine), or one /proc cannot tell of
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass  # removed meanwhile (another stand-in starting as well): its folder is gone or goes now
        except docker.errors.APIError as exc:
            # another stand-in's removal under way (409), or one the engine refuses: this stand-in starts all
            # the same (one orphan must not stop every later one) and leaves the folder to whoever removes it
            _log.warning("the stand-in could not remove pod container %s of a gone stand-in: %s",
                         container.short_id, exc.explanation or exc)
            continue
        removed.append(container.id)
        if _own_emptydir(labels.get(EMPTYDIR_LABEL, ""), container):
            shutil.rmtree(labels[EMPTYDIR_LABEL], ignore_errors=True)
    return removed
