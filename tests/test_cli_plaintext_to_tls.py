"""`plugbay health`, `info` and `call` with --insecure against a plugin served over TLS, or against a server
that is no gRPC plugin (an HTTP/1 server): they waited the whole --timeout, then said UNREACHABLE (exit 3)
"Connection reset by peer", where the library says at once that the plugin may want TLS. Now the library's
own judgement (its TLS probe of a connection closed during setup; plugbay.network.tls's words) ends the
command at once with the typed error, exit 2. The KV example served in network mode over mTLS on 127.0.0.1,
and Python's http.server."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator

import pytest

from tests import netcerts
from tests.cli_util import KV_PROTO, plugbay
from tests.test_network_broker import REPO, CounterReplica

COMMANDS = [["health"], ["info"], ["call", "/proto.KV/Get", '{"key": "a"}', "--proto", str(KV_PROTO)],
            ["call", "/proto.KV/Get", '{"key": "a"}']]
IDS = ["health", "info", "call", "call-reflection"]


@pytest.fixture(scope="module")
def tls_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("plaintls")
    rep = CounterReplica(folder / "kv", netcerts.write_set(folder / "tls"),
                         script=REPO / "examples" / "kv" / "plugin.py")
    try:
        yield f"static:///{rep.address}"
    finally:
        rep.stop()
        shutil.rmtree(rep.tmp, ignore_errors=True)  # the plugin's own TMPDIR


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"static:///127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
def test_insecure_against_a_tls_plugin_says_it_may_want_tls_at_once(tls_plugin: str, args: list[str]) -> None:
    said = plugbay(args[0], tls_plugin, *args[1:], "--insecure", "--timeout", "60", timeout=200)
    err = said.stdout + said.stderr
    assert said.returncode == 2, said
    assert f"TLS with {tls_plugin} failed: " in err and "the plugin may want TLS" in err, err
    assert err.count("pass --ca/--cert/--key") == 1, err  # the advice, said once
    assert "DEADLINE_EXCEEDED" not in err and "UNREACHABLE" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
def test_insecure_against_an_http_server_is_named_at_once(http_server: str, args: list[str]) -> None:
    said = plugbay(args[0], http_server, *args[1:], "--insecure", "--timeout", "60", timeout=200)
    err = said.stdout + said.stderr
    assert said.returncode == 2, said
    assert "something other than HTTP/2 (gRPC)" in err and "the target names another service" in err, err
    # no TLS is involved (as the library's RemoteProtocolError says), and the advice is given once
    assert "TLS with" not in err and "is no gRPC plugin" in err and err.count("pass --ca/--cert/--key") == 1, err
    assert "DEADLINE_EXCEEDED" not in err and "UNREACHABLE" not in err and "Traceback" not in err, err
