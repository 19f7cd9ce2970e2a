"""A gRPC server's set-up fails and then its start() cannot start grpcio's serving thread (a process out
of threads: RuntimeError "can't start new thread"); prints as JSON what the failed set-up raised, whether
its socket file is left and which new threads are left.

argv[1] says where: "session" (a network host session's own instance, session_instance, whose services'
registration fails) or "spare" (a brokered server, spares.build_server, on a socket in a folder that is
not there). The cleanup starts the unstarted server to free it (core/transport/unstarted.py); that start
must not raise over the set-up's error nor skip the stop. Run in a process of its own, as it replaces
threading.Thread.start (tests/test_unstarted_server_fds.py).
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import grpc._server as grpc_server

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import ServeConfig  # noqa: E402
from plugbay.core.broker.spares import build_server  # noqa: E402
from plugbay.core.plugin.network import session_instance  # noqa: E402
from plugbay.core.transport.muxplugin import AcceptedSession  # noqa: E402

real_start = threading.Thread.start


def out_of_threads(thread: threading.Thread) -> None:
    if getattr(thread, "_target", None) is grpc_server._serve:
        raise RuntimeError("can't start new thread")
    real_start(thread)


def failed_session(path: str) -> None:
    config = ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)})
    mux = AcceptedSession(("unix", path))

    def register(*registered: Any) -> None:
        threading.Thread.start = out_of_threads  # type: ignore[method-assign]
        raise ValueError("the plugin's own registration error")
    try:
        session_instance(config, [(1, [PLUGIN_NAME])], register, mux, path)
    finally:
        threading.Thread.start = real_start  # type: ignore[method-assign]
        mux.close()


def failed_spare(path: str) -> None:
    threading.Thread.start = out_of_threads  # type: ignore[method-assign]
    try:
        build_server(None, str(Path.cwd()), str(Path.cwd() / "no-such-folder" / "b.sock"))
    finally:
        threading.Thread.start = real_start  # type: ignore[method-assign]


def main() -> None:
    faulthandler.dump_traceback_later(60, exit=True)  # a hang is a failure with its stacks, not a stuck test
    path = str(Path.cwd() / "s1.sock")
    before = set(threading.enumerate())
    try:
        {"session": failed_session, "spare": failed_spare}[sys.argv[1]](path)
        raised = None
    except Exception as exc:
        raised = f"{type(exc).__name__}: {exc}"
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    print(json.dumps({"raised": raised, "socket_left": os.path.exists(path), "threads_left": left}), flush=True)
    os._exit(0)  # what grpcio's threads would do at the interpreter's exit is not what is tested


if __name__ == "__main__":
    main()
