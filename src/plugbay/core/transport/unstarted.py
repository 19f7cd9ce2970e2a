"""Stopping a gRPC server whose set-up failed before its start().

grpcio frees a server it never started at no point, and with it holds grpc core's poller (two epoll
sets, two eventfds) for the rest of the process: a bind that failed (a port taken, a folder gone) in
a process that goes on (serve() on a thread of the program's own, a network plugin's host session)
left them each time. Started with no port, a server listens nowhere, and its stop() then frees it
(one whose set-up failed past its bind listens there until that stop, which follows at once).
"""

from __future__ import annotations

import grpc


def ready_to_stop(server: grpc.Server) -> None:
    """Start ``server`` unless it was started already, so that stopping it frees it."""
    try:
        server.start()
    except ValueError:  # started already (grpcio: "Cannot start already-started server!")
        pass


def stop_server(server: grpc.Server, grace: float) -> None:
    """Stop ``server``, started or not (see ready_to_stop), waiting for its stop ``grace`` + 3 s at most."""
    ready_to_stop(server)
    server.stop(grace).wait(grace + 3)
