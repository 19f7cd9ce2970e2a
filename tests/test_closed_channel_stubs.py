"""A stub built on a Client's own gRPC channel (``client.channel.current``) once it was closed raises
ClientStateError instead of crashing the process.

grpcio (1.85) registers a generated stub's methods on its C channel, NULL once the channel closed
(SIGSEGV). The channel closes when the plugin dies (and stays current) or the Client is killed (code may
still hold it). Each case runs in a host process of its own, where the crash is seen as that process
dying by a signal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

HOST = textwrap.dedent("""
    import os
    import signal
    import sys
    import threading

    sys.path.insert(0, sys.argv[2])
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
    from kvproto import kv_pb2_grpc

    from plugbay import Client, ClientConfig
    from plugbay.errors import ClientStateError

    case = sys.argv[1]
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                          cmd=[sys.executable, os.path.join(sys.argv[2], "plugin.py")])
    with Client(config) as client:
        raw = client.channel.current  # held by the program from here on
        raw.unary_unary("/proto.KV/Put", _registered_method=True)  # registered while open
        if case == "died":
            closed = threading.Event()
            client.channel.on_close_current.append(closed.set)
            os.kill(int(client.runner.id), signal.SIGKILL)
            assert closed.wait(60), "the dead plugin's channel was not closed"
            target = client.channel.current  # the dead plugin's channel stays current, closed
        else:
            client.kill()
            target = raw
        assert target is raw and type(target).__module__ == "grpc._channel"  # handed out as it is
        raw.unary_unary("/proto.KV/Put", _registered_method=True)  # only looked up by grpcio: built as before
        try:
            kv_pb2_grpc.KVStub(target)
            print("built")
        except ClientStateError as exc:
            print("refused:", exc)
""")


@pytest.mark.parametrize("case", ["died", "killed"])
def test_a_stub_on_the_closed_current_channel_is_refused_typed(case: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-c", HOST, case, str(REPO / "examples" / "kv")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"the host process ended with {run.returncode} (a signal: < 0)\n{run.stderr[-3000:]}"
    assert run.stdout.startswith("refused: cannot build /proto.KV/Get on the gRPC channel of plugin 'plugin'"
                                 " (Client.channel.current): it was closed"), run.stdout

