"""Stopping a gRPC server whose set-up failed before its start().

grpcio frees a server it never started at no point, and with it holds grpc core's poller (two epoll
sets, two eventfds) for the rest of the process: a bind that failed (a port taken, a folder gone) in
a process that goes on (serve() on a thread of the program's own, a network plugin's host session)
left them each time. Started with no port, a server listens nowhere, and its stop() then frees it
(one whose set-up failed past its bind listens there until that stop, which follows at once).
"""

from __future__ import annotations

import logging

import grpc

log = logging.getLogger("plugbay.server")


def ready_to_stop(server: grpc.Server) -> bool:
    """Start ``server`` unless it was started already, so that stopping it frees it.

    True when it was not started before: it has served no call, so its stop needs no grace. Never
    raises: it runs on a failed set-up's cleanup path, where the set-up's error is the one to see, and
    the stop (with its waits) must still follow."""
    try:
        server.start()
    except ValueError:  # started already (grpcio: "Cannot start already-started server!")
        return False
    except Exception:  # e.g. RuntimeError "can't start new thread": grpcio marked it started all the same
        log.debug("starting an unstarted gRPC server to stop it failed", exc_info=True)
    return True


def stop_server(server: grpc.Server, grace: float) -> None:
    """Stop ``server``, started or not (see ready_to_stop), waiting for its stop ``grace`` + 3 s at most;
    one that was never started (a set-up failed past its bind) is stopped at once."""
    if ready_to_stop(server):
        grace = 0
    server.stop(grace).wait(grace + 3)
