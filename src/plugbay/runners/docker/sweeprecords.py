"""A Docker sweep's judgement of the records of the containers plugbay's runners created (madehere.py): which
engine made each, and which to drop because that engine says the container is gone (removed without plugbay)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from plugbay.runners.docker.engine import engine_call, engine_failures
from plugbay.runners.docker.madehere import (Record, describe_engine, forget_made, note_engine, read_records,
                                             stale_records)

_log = logging.getLogger("plugbay.runners.docker")
# the records a sweep asks the engine about at most (one inspect each): a folder of thousands, left by an
# engine reset, is worked off over sweeps rather than holding one up
RECORDS_PER_SWEEP = 100


def judge_records(client: Any, seen: Collection[str], grace: float, this_engine: str | None, dry_run: bool,
                  spared: dict[str, str] | None, scope: Collection[str] | None = None) -> None:
    """Note this engine in the records of the containers it listed (``seen``: provably its own, a record naming
    no engine or another identity of it); then drop the records of this engine's containers it says do not
    exist (removed without plugbay: a dry run only lists them). Only by the engine's NotFound for that id: a
    container missing from the listing may have been created after it (its record written just after), and one
    the engine fails to inspect keeps its record. The stale records of other engines, or naming none, are kept
    and told in ``spared``: this engine's NotFound says nothing of them. ``scope`` (sweep(sessions=)): only the
    records those host sessions wrote are noted, judged or told; None: every one."""
    from docker.errors import NotFound

    if this_engine is not None and not dry_run:
        for record in read_records():
            if (record.container_id in seen and record.engine != this_engine
                    and (scope is None or record.session in scope)):
                note_engine(record, this_engine)
    stale: list[Record] = []
    elsewhere: dict[str, str] = {}  # the records of other machines' hosts, and why each is kept
    # an orphan sibling names no session: tidied only by a sweep of every session
    for record in stale_records(grace, seen, tidy=not dry_run and scope is None, elsewhere=elsewhere):
        if scope is not None and record.session not in scope:  # another session's: not the caller's to judge
            continue
        if this_engine is not None and record.engine == this_engine:
            stale.append(record)
        elif spared is not None:
            spared[record.container_id] = kept_why(record, this_engine)
    if spared is not None and elsewhere:
        ours = None if scope is None else {r.container_id for r in read_records() if r.session in scope}
        spared.update((ident, why) for ident, why in elsewhere.items() if ours is None or ident in ours)
    if dry_run:
        return
    failed = engine_failures()
    stale = stale[:RECORDS_PER_SWEEP]
    for asked, record in enumerate(stale):
        try:
            engine_call(lambda: client.api.inspect_container(record.container_id), "inspect a recorded container")
        except NotFound:
            forget_made(record.container_id)
            _log.info("sweep dropped the record of container %s: the engine has no such container (removed"
                      " without plugbay)", record.container_id[:12])
        except failed as exc:
            # an engine that fails one inspect (stalled, restarting) would fail the rest, each after its timeout
            _log.warning("sweep kept the records of %d containers for a later sweep: the engine failed to say"
                         " whether container %s exists: %s", len(stale) - asked, record.container_id[:12], exc)
            return


def kept_why(record: Record, this_engine: str | None) -> str:
    """Why a gone host's record of a container this engine does not list is kept, and what to do about it."""
    if this_engine is None:
        # it refused /info (or told no usable ID): no record is judged by its word, whichever engine it names
        return (f"record {record.path} kept: this engine does not tell its ID (docker info refused, or no usable"
                " ID), so its \"no such container\" proves nothing of any record. A sweep against an engine that"
                " tells its ID (allow GET /info) judges it")
    here = f"this engine ({describe_engine(this_engine)})"
    if record.engine is not None:
        whose = (f"its container was made by engine {describe_engine(record.engine)}, not {here}: a sweep against"
                 " that engine (DOCKER_HOST set to it) removes the container, or drops the record once it is gone")
    else:
        whose = (f"it names no engine (an earlier plugbay release wrote it) and {here} does not list its container:"
                 " another engine's, or removed without plugbay. A sweep against the engine that has it removes it;"
                 " if none has it, delete the record")
    return f"record {record.path} kept: {whose}"
