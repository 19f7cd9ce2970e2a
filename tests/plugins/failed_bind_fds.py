"""A gRPC server's bind fails in a process that goes on; prints this process's descriptors of each
kind (anon_inode:[eventpoll], anon_inode:[eventfd], pipe, socket, ...) before and after, as JSON.

argv[1] says where the bind fails: "session" (a network host session's own instance,
plugbay.core.plugin.network.session_instance, on a socket in a folder that is not there) or
"spare" (a brokered server, plugbay.core.broker.spares.build_server, likewise), or
"thread" (serve() in network mode on a thread of the program's own, on a port that is taken:
serve() ends that thread with SystemExit, the program goes on). Run in a process of its own:
grpc core's poller is one per process, freed with the last server or channel, so a process that
holds any other (a test run's) would hide it (tests/test_unstarted_server_fds.py).
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import NetworkServe, ServeConfig, ServeStop, serve  # noqa: E402
from plugbay.core.broker.spares import build_server  # noqa: E402
from plugbay.core.plugin.network import session_instance  # noqa: E402
from plugbay.core.transport.muxplugin import AcceptedSession  # noqa: E402
from plugbay.errors import BrokerError  # noqa: E402

SETTLE = 10.0  # grpc core frees its poller on a thread of its own once the last server is gone


def kinds() -> dict[str, int]:
    """As tests/leakcheck.py reads them: what each /proc/self/fd entry links to (a socket's, a pipe's inode dropped)."""
    found: Counter[str] = Counter()
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue  # the listing's own descriptor
        found[target.split(":[")[0] if target.startswith(("socket:", "pipe:")) else target] += 1
    return dict(found)


def failed_session(config: ServeConfig) -> None:
    path = str(Path.cwd() / "no-such-folder" / "s1.sock")
    mux = AcceptedSession(("unix", path))
    try:
        session_instance(config, [(1, [PLUGIN_NAME])], lambda *registered: None, mux, path)
    except RuntimeError as exc:  # grpcio's "Failed to bind"
        print(f"bind failed: {exc}", file=sys.stderr)
    else:
        raise AssertionError("the session's server bound a folder that is not there")
    finally:
        mux.close()


def failed_spare(config: ServeConfig) -> None:
    try:
        build_server(None, str(Path.cwd()), str(Path.cwd() / "no-such-folder" / "b.sock"))
    except BrokerError as exc:  # "could not listen on unix socket"
        print(f"bind failed: {exc}", file=sys.stderr)
    else:
        raise AssertionError("the brokered server bound a folder that is not there")


def failed_serve(config: ServeConfig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config.network = NetworkServe(listen="127.0.0.1:%d" % taken.getsockname()[1], insecure=True,
                                      stop=ServeStop())
        thread = threading.Thread(target=serve, args=(config,), name="failed-serve")
        thread.start()
        thread.join(60)
        assert not thread.is_alive(), "serve() on a taken port did not fail"


def main() -> None:
    config = ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)})
    before = kinds()
    {"session": failed_session, "spare": failed_spare, "thread": failed_serve}[sys.argv[1]](config)
    gc.collect()
    deadline = time.monotonic() + SETTLE
    while (after := kinds()) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    print(json.dumps({"before": before, "after": after}))


if __name__ == "__main__":
    main()
