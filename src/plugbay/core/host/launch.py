"""Launching a plugin: go-plugin's environment, and reading the handshake line (host side)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping

from plugbay.errors import HandshakeError, HandshakeTimeoutError, PluginExitedError
from plugbay.core.protocol.handshake import (
    ENV_CLIENT_CERT,
    ENV_MAX_PORT,
    ENV_MIN_PORT,
    ENV_MULTIPLEX_GRPC,
    ENV_PROTOCOL_VERSIONS,
    ENV_UNIX_SOCKET_DIR,
    ENV_UNIX_SOCKET_GROUP,
    HandshakeConfig,
    HandshakeInfo,
    parse_handshake_line,
)
from plugbay.core.host.logs import LogPump
from plugbay.core.protocol.tls import CertKey
from plugbay.core.transport.sockets import give_to_group, group_id
from plugbay.runners.base import Runner

_log = logging.getLogger("plugbay.client")
_EOF = object()
# After the plugin exited, how long to keep waiting for a line it may have printed.
_EXIT_LINGER = 1.0


def launch_env(handshake: HandshakeConfig, versions: Iterable[int], *, env: Mapping[str, str],
               socket_dir: str | None, cert: CertKey | None, min_port: int, max_port: int,
               multiplex: bool, socket_group: str | int | None = None) -> dict[str, str]:
    """The variables go-plugin's client sets; they override the caller's ``env``."""
    out = dict(env)
    out[handshake.magic_cookie_key] = handshake.magic_cookie_value
    out[ENV_PROTOCOL_VERSIONS] = ",".join(str(v) for v in sorted(set(versions)))
    out[ENV_MIN_PORT] = str(min_port)
    out[ENV_MAX_PORT] = str(max_port)
    if socket_dir is not None:
        out[ENV_UNIX_SOCKET_DIR] = socket_dir
    if socket_group is not None:
        out[ENV_UNIX_SOCKET_GROUP] = str(socket_group)
    if cert is not None:
        out[ENV_CLIENT_CERT] = cert.cert_pem.decode()
    if multiplex:
        out[ENV_MULTIPLEX_GRPC] = "true"
    return out


def share_with_group(path: str, group: str | int) -> None:
    """Make the private socket dir usable by ``group`` (0770), as go-plugin's setGroupWritable."""
    give_to_group(path, group_id(group, "give ClientConfig(unix_socket_group=) a group name or numeric gid"),
                  0o770)


def read_handshake(runner: Runner, logs: LogPump, deadline: float, name: str, start_timeout: float,
                   threads: list[threading.Thread]) -> HandshakeInfo:
    """Wait (bounded) for the first stdout line and parse it; later lines go to ``logs``.

    The reader thread is appended to ``threads`` for the caller to join.
    """
    lines: queue.Queue[object] = queue.Queue()

    def pump() -> None:
        first = True
        try:
            for line in runner.stdout_lines():
                if first:
                    lines.put(line)
                    first = False
                else:  # go-plugin keeps draining stdout; plugbay logs what comes
                    logs.handle(line, "stdout")
        except Exception as exc:
            _log.debug("reading plugin stdout failed: %s", exc)
        finally:
            lines.put(_EOF)

    thread = threading.Thread(target=pump, name=f"plugbay-stdout-{name}", daemon=True)
    threads.append(thread)
    thread.start()
    exited_at: float | None = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            runner.kill(0)
            raise HandshakeTimeoutError(
                f"plugin {name!r} did not print its handshake line within {start_timeout:.1f}s, so it"
                " was killed. Raise start_timeout if it is slow to start; check that it calls serve()"
                f" (or plugin.Serve) and prints nothing before the handshake.\n{runner.diagnose()}"
            )
        try:
            item = lines.get(timeout=min(0.2, deadline - now))
        except queue.Empty:
            # A grandchild may hold stdout open after the plugin exits: also watch the exit.
            if exited_at is None and runner.wait(0) is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > _EXIT_LINGER:
                item = _EOF
            else:
                continue
        if item is _EOF:
            # A plugin that ends closes stdout just before it exits; one that closed
            # stdout and lives on will never print the line: fail now, not at the timeout.
            code = runner.wait(min(2.0, max(deadline - time.monotonic(), 0.0)))
            if code is None:
                runner.kill(0)
                logs.join(2.0)
                raise HandshakeError(
                    f"plugin {name!r} closed its stdout without printing a handshake line but kept"
                    " running, so it was killed. go-plugin plugins print the handshake line on stdout;"
                    " check that the plugin does not close or redirect its stdout before serving."
                    f"\n{runner.diagnose()}")
            logs.join(2.0)
            raise PluginExitedError(name, code, logs.tail()[-20:], runner.exit_detail())
        assert isinstance(item, str)
        _log.debug("plugin %s handshake: %s", name, item)
        return parse_handshake_line(item)
