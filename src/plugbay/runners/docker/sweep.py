"""The sweep of plugbay's containers whose host session is gone (and of their socket folders), of the
images plugbay built that nothing uses or names any more, and of the networks plugbay made that no
container is on (those two once made at least the grace ago: grace.py)."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Collection, Iterable
from typing import Any

from plugbay.errors import ConfigError, EngineUnavailableError, RunnerError
from plugbay.runners.docker.engine import (SOCKET_DIR, end_socket_dir, engine, engine_call, engine_failures,
                                           require_sdk)
from plugbay.runners.docker.grace import GRACE, Grace, checked_grace
from plugbay.runners.docker.hardening import MADE_NETWORK, made_by_plugbay
from plugbay.runners.docker.madehere import engine_identity, forget_made, made_here, records_roots
from plugbay.runners.docker.sweeprecords import judge_records
from plugbay.runners.session import (HOST, HOST_PIDS, MACHINE, MANAGED, SESSION, SESSION_START, host_session_id,
                                     owner_of, session_gone, session_scope)

_log = logging.getLogger("plugbay.runners.docker")
# plugbay.images labels every image it builds with the hash of what went into it
BUILT = "plugbay.content-hash"
_FULL_ID = re.compile(r"[0-9a-f]{64}", re.ASCII)


def _opened(client: Any) -> tuple[Any, bool]:
    """The caller's engine client, or one of the sweep's own (True: the sweep closes it when it ends)."""
    require_sdk()
    return (client, False) if client is not None else (engine(), True)


def sweep(live_sessions: Iterable[str] | None = None, *, client: Any = None, dry_run: bool = False,
          images: bool = False, networks: bool = False, grace: float = GRACE,
          spared: dict[str, str] | None = None, sessions: Iterable[str] | None = None) -> list[str]:
    """Remove plugbay containers whose host session is gone; return their ids.

    ``dry_run=True`` removes nothing and returns the ids it would remove. ``images=True``: then (not in a
    dry run) remove the images plugbay built that nothing names or uses any more (:func:`sweep_images`);
    ``networks=True``: and every network plugbay made that no container is on (:func:`sweep_networks`),
    each made at least ``grace`` seconds ago. Both off by default: they are the whole engine's, shared with
    other hosts and builds, and a host sweeping its own containers would race their starts and builds
    (``plugbay sweep --docker``, the machine's operator, sweeps them).

    Without ``live_sessions``, a session is gone when its host process no longer
    runs on this machine (containers started from other machines are left
    alone). With it, every session not listed counts as gone. A container
    another host reattached to has two sessions, its starting host's (its
    ``plugbay.session`` label) and the claimant's (its name): it goes only when
    both are gone. A container either names as this process is never removed, nor one whose id no
    runner of this user recorded creating (madehere.py): labels are anyone's to write. ``spared``: filled with
    the id of each container of a gone session left for want of that record, and why (``docker rm -f`` it).
    Not in a dry run: the records of containers removed without plugbay (``docker rm -f``, a prune), older
    than ``grace``, of host processes that no longer run, are dropped once the engine says the container
    does not exist (at most RECORDS_PER_SWEEP of them a sweep, oldest first), if this engine made it (the
    record names it: madehere.py). Those of another engine, or naming none, are kept, and ``spared`` gets
    each such container's id and why.

    ``sessions``: only the containers one of these host sessions (the ``plugbay.session`` label's, or the
    claimant's a reattach wrote in the name) started or claimed are looked at, and only the records those
    sessions' hosts wrote are judged; the others are left alone and ``spared`` names none of them (an empty
    ``sessions`` looks at nothing). With ``images=True`` or ``networks=True`` it is a ConfigError: those are
    the whole engine's, no session's. A container may be between hosts: its
    starting host gone, the host reattaching to it not yet its claimant (written once the reattach held); a
    sweep of every session removes it then, so a caller that knows whose containers it means names them.
    """
    checked_grace(grace)  # before anything is removed
    scope = _scope(sessions, images, networks)
    client, own = _opened(client)  # first: it says what to install when the docker SDK is missing
    from docker.errors import NotFound

    failed = engine_failures()
    live = set(live_sessions) if live_sessions is not None else None
    here, own_session = socket.gethostname(), host_session_id()
    removed: list[str] = []
    seen: set[str] = set()
    try:
        this_engine = engine_identity(client, "sweep again")  # which records it may judge by the engine's word
        # the SDK inspects each container listed: one removed meanwhile (its host killing its plugin)
        # has nothing left to sweep, and must not end the sweep of the others
        found = engine_call(lambda: client.containers.list(all=True, filters={"label": f"{MANAGED}=true"},
                                                           ignore_removed=True), "list plugbay containers")
        for container in found:
            seen.add(container.id)
            labels = container.labels or {}
            session, start = owner_of(container.name, labels)
            # the starting host keeps its plugin while it lives, whoever reattached since: a reattaching
            # host that closed (its plugin runs on) and exited must not leave it to the sweep
            owners = {(session, start), (labels.get(SESSION, ""), labels.get(SESSION_START, ""))}
            if any(s == own_session for s, _ in owners):
                continue
            if scope is not None and scope.isdisjoint(s for s, _ in owners):  # not the caller's to judge
                continue
            if live is not None:
                gone = all(s not in live for s, _ in owners)
            else:
                gone = all(session_gone(labels.get(HOST), labels.get(HOST_PIDS), s, t, labels.get(MACHINE))
                           for s, t in owners)
            if not gone:
                continue
            if not made_here(container.id):
                # its labels are anyone's to write (or copied by `docker commit`): only a container a runner of
                # this user recorded having created is plugbay's to remove
                why = (f"container: its labels name a gone session, but no runner of this user recorded creating"
                       f" it ({', '.join(str(r) for r in records_roots())}); if it is plugbay's, remove it with"
                       f" `docker rm -f {container.short_id}`")
                _log.info("sweep left container %s: %s", container.short_id, why)
                if spared is not None:
                    spared[container.id] = why
                continue
            if dry_run:
                removed.append(container.id)
                continue
            try:
                # the decision came from the listing: a host that reattached since (adopted() renames the
                # container to its session) may use it now. The engine has no conditional removal, so this
                # narrows the window to the one between this inspect and the removal
                container.reload()
                if owner_of(container.name, container.labels or {}) != (session, start):
                    _log.info("sweep spared container %s: another host claimed it while the sweep ran",
                              container.short_id)
                    continue
                container.remove(force=True, v=True)
            except NotFound:
                forget_made(container.id)
                continue
            except failed as exc:
                _log.warning("sweep could not remove container %s of gone session %s: %s; remove it with"
                             " `docker rm -f %s`", container.short_id, session, exc, container.short_id)
                continue
            forget_made(container.id)
            removed.append(container.id)
            if labels.get(SOCKET_DIR) and labels.get(HOST) == here:
                # labels are untrusted: only a folder holding the marker plugbay wrote for this container
                unproven = end_socket_dir(labels[SOCKET_DIR], labels)
                if unproven is not None:
                    _log.warning("sweep left socket folder %r of container %s alone: %s", labels[SOCKET_DIR],
                                 container.short_id, unproven)
        judge_records(client, seen, grace, this_engine, dry_run, spared, scope)
        if images and not dry_run:  # the containers removed above may have been the last users of an image
            sweep_images(client=client, grace=grace)
        if networks and not dry_run:  # or of a network
            sweep_networks(client=client, grace=grace)
    except EngineUnavailableError:
        raise  # engine_call() said what to do
    except failed as exc:  # the list failed: a removal's failure was warned of above
        raise RunnerError(f"sweep could not list plugbay's containers: the Docker engine failed ({exc}). Check"
                          f" it (`docker ps -a --filter label={MANAGED}=true`) and sweep again") from exc
    finally:
        if own:
            client.close()
    return removed


def _scope(sessions: Iterable[str] | None, images: bool, networks: bool) -> frozenset[str] | None:
    """sweep(sessions=) as a set, checked before anything is removed."""
    scope = session_scope(sessions, "the plugbay.session label")
    if scope is not None and (images or networks):
        # they are the whole engine's, no session's: a sweep of some sessions would sweep everyone's of them
        raise ConfigError("sweep(sessions=) sweeps those sessions' containers only: the images and networks are"
                          " the whole engine's, so images=True and networks=True are refused with it. Sweep them"
                          " on their own (sweep_images(), sweep_networks()) or sweep every session")
    return scope


def sweep_images(*, client: Any = None, dry_run: bool = False, leaving: Collection[str] = (),
                 grace: float = GRACE, ids: Collection[str] | None = None,
                 spared: dict[str, str] | None = None) -> list[str]:
    """Remove the images plugbay built that no tag names and no container uses, made at least ``grace``
    seconds ago; return their ids (with ``dry_run``, the ids it would remove; ``leaving``: the ids of
    containers a dry run of :func:`sweep` listed, which count as gone, as a real sweep removes them first).
    A rebuild keeps the image it took the tag from while a container (a stopped one too) uses it: it
    stayed behind as ``<none>`` once that container was gone.

    An image plugbay built is one whose newest step is plugbay's own ``LABEL plugbay.content-hash=...``:
    the label alone is not proof, since every image built FROM a plugbay image inherits it (a user's
    untagged build, and each step of a classic build under way, which a removal would break).
    ``grace``: a build's image is untagged until its tag is set, just after its last step; an image whose
    creation time the engine does not give as a timestamp stays too, unless ``grace=0`` (see grace.py).
    ``ids``: only images of these full ids, with or without ``sha256:`` (a caller sweeping its own; not the
    12-digit ids ``plugbay sweep`` prints: a ConfigError). ``spared``: filled with the id of each
    image left for its age, and why.
    Never forced: the engine refuses an image a container (or a child image) uses, and such an image
    is left as it is. Failures are logged, not raised: whatever else a sweep does still counts.
    """
    checked_grace(grace)  # the caller's error, before any request
    wanted = None if ids is None else _full_ids(ids)
    client, own = _opened(client)  # first: it says what to install when the docker SDK is missing
    judge = Grace(client, grace)
    from docker.errors import NotFound

    failed = engine_failures()
    removed: list[str] = []
    try:
        found = engine_call(lambda: client.api.images(filters={"dangling": True, "label": BUILT}, quiet=True),
                            "list plugbay's untagged images")
        for image_id in found:
            if wanted is not None and image_id.removeprefix("sha256:") not in wanted:
                continue
            try:
                attrs = _built_here(client, image_id)
                if attrs is None or _users(engine_call(lambda: client.api.containers(
                        all=True, quiet=True, filters={"ancestor": image_id}), "list the image's containers"), leaving):
                    continue  # in use: a real sweep's removal is refused by the engine too
                why = judge.withheld(attrs.get("Created"))
                if why is not None:
                    _log.info("sweep left image %s: %s", image_id[7:19], why)
                    if spared is not None:
                        spared[image_id] = f"image: {why}"  # keyed by its id, which `left` lines print
                    continue
                if dry_run:
                    removed.append(image_id)
                    continue
                # a rebuild that hit the builder's cache tags this old image again (its Created stays old), and
                # the engine removes an image of one tag by its id without asking: only one still untagged goes
                if _tagged(engine_call(lambda: client.api.inspect_image(image_id), "inspect the image again")):
                    _log.info("sweep left image %s: tagged again while the sweep ran", image_id[7:19])
                    continue
                engine_call(lambda: client.api.remove_image(image_id), "remove the image")
            except NotFound:
                continue
            except failed as exc:
                if getattr(exc, "status_code", None) != 409:  # 409: in use, or tagged meanwhile: kept
                    _log.warning("sweep could not remove image %s: %s", image_id[7:19], exc)
                continue
            _log.info("sweep removed image %s (built by plugbay, no longer named or used)", image_id[7:19])
            removed.append(image_id)
    except failed as exc:
        _log.warning("sweep could not list plugbay's untagged images: %s; list them with `docker images"
                     " --filter dangling=true --filter label=%s`", exc, BUILT)
    finally:
        if own:
            client.close()
    return removed


def _full_ids(ids: Collection[str]) -> set[str]:
    """``ids`` as the 64 hex digits the engine lists (a short id would silently match nothing)."""
    if isinstance(ids, str):
        raise ConfigError(f"ids must be a collection of image ids, not the string {ids[:80]!r}")
    full = {str(i).removeprefix("sha256:") for i in ids}
    short = [i for i in full if not _FULL_ID.fullmatch(i)]
    if short:
        raise ConfigError("ids takes full image ids (64 lowercase hex digits, with or without sha256:, as the sweep"
                          f" returns them), not {short[0][:80]!r}")
    return full


def _users(containers: list[dict[str, Any]], leaving: Collection[str]) -> list[str]:
    """The ids of the listed containers (a quiet list's) but those a dry run counts as gone."""
    return [str(c.get("Id", "")) for c in containers if c.get("Id") not in leaving]


def _tagged(attrs: Any) -> bool:
    """Whether an image's inspect names a tag (an engine may list an untagged one as ``<none>:<none>``).
    Only a dict whose RepoTags is missing, None or a list of ``<none>:<none>`` counts as untagged: any other
    shape is garbled, and a garbled image is kept."""
    if not isinstance(attrs, dict):
        return True
    tags = attrs.get("RepoTags")
    if tags is None:
        return False
    return not isinstance(tags, list) or any(tag != "<none>:<none>" for tag in tags)


def _built_here(client: Any, image_id: str) -> dict[str, Any] | None:
    """The image's inspect when its newest step is plugbay's label step, with the value its label has."""
    attrs = engine_call(lambda: client.api.inspect_image(image_id), "inspect the image") or {}
    value = ((attrs.get("Config") or {}).get("Labels") or {}).get(BUILT)
    history = engine_call(lambda: client.api.history(image_id), "read the image's history")
    newest = str((history[0] if history else {}).get("CreatedBy") or "")
    return attrs if value and newest.rstrip().endswith(f"LABEL {BUILT}={value}") else None


def sweep_networks(*, client: Any = None, dry_run: bool = False, names: Collection[str] | None = None,
                   leaving: Collection[str] = (), grace: float = GRACE,
                   spared: dict[str, str] | None = None) -> list[str]:
    """Remove the networks plugbay made that no container is on, made at least ``grace`` seconds ago; return
    their ids (with ``dry_run``, the ids it would remove; ``leaving``: as for :func:`sweep_images`).
    DockerRunner(network=NAME) makes NAME on first use (the tcp transport's isolated bridge) and keeps it
    for later starts, a misspelled NAME too.

    A network counts as plugbay's only when it has the labels, driver and options plugbay gives a network
    it creates (hardening.made_by_plugbay): a network someone else made stays, one labelled
    plugbay.managed=true for plugbay to join too, and so do those of releases before that label. A network
    any container is on, a stopped or a merely created one too, stays; one a container joined after the
    look is refused by the engine (while that container runs) and stays. ``grace``: a runner makes its
    network a moment before its container's create puts the first container on it, so a network made less
    than that ago stays, and so does one whose creation time the engine does not give as a timestamp, unless
    ``grace=0`` (see plugbay.runners.docker.grace): sweeps one after another no longer remove the network
    each start makes (a NetworkSweptError once they did so three times). A DockerRunner that finds its
    network gone, at a start or between its container's create and start, makes it anew.
    ``names``: only networks of these names (a caller sweeping its own, beside other users of the engine).
    ``spared``: filled with the id of each network left for its age, and why.
    Failures are logged, not raised: whatever else a sweep does still counts.
    """
    checked_grace(grace)  # the caller's error, before any request
    client, own = _opened(client)  # first: it says what to install when the docker SDK is missing
    judge = Grace(client, grace)
    from docker.errors import NotFound

    failed = engine_failures()
    removed: list[str] = []
    try:
        found = engine_call(lambda: client.api.networks(filters={"label": MADE_NETWORK}), "list plugbay's networks")
        for attrs in found:
            net_id, name = str(attrs.get("Id", "")), str(attrs.get("Name", ""))
            if not net_id or not made_by_plugbay(attrs) or (names is not None and name not in names):
                continue
            try:
                # by id and by name: a container's network settings name both once it ran, a created one's
                # may have the name alone
                if any(_users(engine_call(lambda: client.api.containers(all=True, quiet=True,
                                                                        filters={"network": key}),
                                          "list the network's containers"), leaving)
                       for key in (net_id, name)):
                    continue
                why = judge.withheld(attrs.get("Created"))
                if why is not None:
                    _log.info("sweep left network %s (%s): %s", name, net_id[:12], why)
                    if spared is not None:
                        spared[net_id] = f"network {name}: {why}"
                    continue
                if dry_run:
                    removed.append(net_id)
                    continue
                engine_call(lambda: client.api.remove_network(net_id), "remove the network")
            except NotFound:
                continue
            except failed as exc:
                if getattr(exc, "status_code", None) not in (403, 409):  # in use (joined since the look): kept
                    _log.warning("sweep could not remove network %s (%s): %s", name, net_id[:12], exc)
                continue
            _log.info("sweep removed network %s (%s): plugbay made it, and no container is on it", name, net_id[:12])
            removed.append(net_id)
    except failed as exc:
        _log.warning("sweep could not list plugbay's networks: %s; list them with `docker network ls --filter"
                     " label=%s`", exc, MADE_NETWORK)
    finally:
        if own:
            client.close()
    return removed
