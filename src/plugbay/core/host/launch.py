"""Launching a plugin: go-plugin's environment, and reading the handshake line (host side)."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping

from plugbay.errors import (ConfigError, HandshakeError, HandshakeTimeoutError, MalformedHandshakeError,
                            PluginExitedError, ProtocolMismatchError, RunnerError, VersionMismatchError, printable)
from plugbay.core.protocol.handshake import (
    ENV_CLIENT_CERT,
    ENV_MAX_PORT,
    ENV_MIN_PORT,
    ENV_MULTIPLEX_GRPC,
    ENV_MUX_HOLDS_STREAMS,
    ENV_PROTOCOL_VERSIONS,
    ENV_UNIX_SOCKET_DIR,
    ENV_UNIX_SOCKET_GROUP,
    HandshakeConfig,
    HandshakeInfo,
    parse_handshake_line,
)
from plugbay.core.host.logs import LogPump
from plugbay.core.protocol.tls import CertKey
from plugbay.core.transport.lines import MAX_LINE, was_cut
from plugbay.core.transport.sockets import give_to_group, group_id
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.runners.base import Joinable, Runner
from plugbay.runners.process import ProcessRunner

_log = logging.getLogger("plugbay.client")
_EOF = object()
# After the plugin exited, how long to keep waiting for a line it may have printed.
_EXIT_LINGER = 1.0
# the same setting where a shell user sets it: plugbay run's and the gateway's flag
_FLAG = " (--start-timeout on plugbay's command line)"
# The runners Clients took (by id; an entry goes with its runner). A runner runs one plugin once: a
# second Client handed one must be refused before it touches it, as its failure would end the other's plugin.
_TAKEN: weakref.WeakValueDictionary[int, Runner] = weakref.WeakValueDictionary()
_TAKEN_LOCK = threading.Lock()
# A unix socket path holds at most 107 bytes; the plugin names its socket in the private folder
# (plugbay's "/plugin" and 8 characters, go-plugin's "/plugin" and up to 10 digits): leave it 20. A plugbay
# plugin's private sockets go there too, with short names (tempdirs.private_room, private_socket)
_SOCKET_PATH_MAX = 107
_SOCKET_NAME_ROOM = 20
# Shared with a group (0770), the folder is not private enough for those: a plugbay plugin nests its own
# 0700 folder there ("/plugbay-broker-XXXXXXXX", the longest name it makes) and names its sockets in that
_SHARED_ROOM = len("/plugbay-broker-12345678") + _SOCKET_NAME_ROOM
_FOLDER_NAME = len("/plugbay-12345678")  # what make_tempdir adds to the parent


def launch_env(handshake: HandshakeConfig, versions: Iterable[int], *, env: Mapping[str, str],
               socket_dir: str | None, cert: CertKey | None, min_port: int, max_port: int,
               multiplex: bool, socket_group: str | int | None = None,
               holds_streams: bool = False) -> dict[str, str]:
    """The variables go-plugin's client sets; they override the caller's ``env``.

    ``holds_streams``: this host's multiplexed session holds streams opened before their
    knock (HostMux does), so a plugbay plugin need not wait for the knock's ack."""
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
        if holds_streams:
            out[ENV_MUX_HOLDS_STREAMS] = "1"
        else:
            out.pop(ENV_MUX_HOLDS_STREAMS, None)
    return out


def take_runner(runner: Runner, name: str) -> None:
    """Mark ``runner`` as this Client's, or raise RunnerError (touching nothing) when another Client took
    it or it was started by hand (Runner.start_called)."""
    with _TAKEN_LOCK:
        taken = _TAKEN.get(id(runner)) is runner
        started = getattr(runner, "start_called", False) is True  # a subclass may use the name otherwise
        if not taken and not started:
            _TAKEN[id(runner)] = runner
            return
    raise RunnerError(f"the {type(runner).__name__} of plugin {name!r} was already"
                      f" {'given to another Client' if taken else 'started'} (one runner runs one plugin once,"
                      " for one Client), so this Client left it alone; make a new runner for each Client")


def private_folder(parent: str | None, group: str | int | None, plugin_sockets: bool) -> str:
    """Make the plugin's private socket folder in ``parent`` (None: the temp dir), or raise a ConfigError
    saying what to change. ``plugin_sockets``: a plugin to be launched makes its socket there."""
    try:
        path = make_tempdir("plugbay-", dir=parent)
    except OSError as exc:
        where = parent or tempfile.gettempdir()
        raise ConfigError(f"cannot make the plugin's private folder in {where!r} ({exc.strerror or exc}); set"
                          " unix_socket_temp_dir (or TMPDIR) to a short folder this process may write") from exc
    try:
        room = _SOCKET_NAME_ROOM if group is None else _SHARED_ROOM
        needs = len(os.fsencode(path)) + room
        if plugin_sockets and needs > _SOCKET_PATH_MAX:
            # the plugin would fail to listen only once launched, with an error about its own variables
            longest = _SOCKET_PATH_MAX - room - _FOLDER_NAME
            raise ConfigError(f"the plugin's socket in its private folder in {os.path.dirname(path)!r} would be"
                              f" about {needs} bytes long, over the {_SOCKET_PATH_MAX} bytes"
                              " a unix socket path may have; set ClientConfig.unix_socket_temp_dir (or TMPDIR)"
                              f" to a folder whose path has at most {longest} bytes"
                              + (" (shared with unix_socket_group, it holds the plugin's own private folder too)"
                                 if group is not None else ""))
        if group is not None:
            share_with_group(path, group)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def share_with_group(path: str, group: str | int) -> None:
    """Make the private socket dir usable by ``group`` (0770), as go-plugin's setGroupWritable."""
    give_to_group(path, group_id(group, "give ClientConfig(unix_socket_group=) a group name or numeric gid"),
                  0o770)


class OutputFeed:
    """A runner's pushed output: the first stdout line is the handshake, every other line is logged."""

    def __init__(self, logs: LogPump) -> None:
        self.logs = logs
        self.first: queue.Queue[object] = queue.Queue()
        self.made_at = time.monotonic()  # right after runner.start(): read_handshake() tells its time apart
        self._seen = False
        logs.opened()
        logs.opened()

    def on_line(self, stream: str, line: str) -> None:
        if stream == "stdout" and not self._seen:
            self._seen = True
            self.first.put(line)
        else:  # go-plugin keeps draining stdout; plugbay logs what comes
            self.logs.handle(line, stream)

    def on_end(self, stream: str) -> None:
        try:
            if stream == "stdout":
                self.first.put(_EOF)
        finally:
            self.logs.closed()


def follow_output(runner: Runner, logs: LogPump,
                  first_line_by: float | None = None) -> tuple[OutputFeed, Joinable]:
    """Start taking ``runner``'s stdout and stderr (the process runner: on the shared I/O thread).

    ``first_line_by``: the runner may read up to the handshake line here first (Runner.follow_output).
    """
    feed = OutputFeed(logs)
    # A Runner subclass written before first_line_by may override follow_output(on_line, on_end).
    takes = first_line_by is not None and type(runner).follow_output in (Runner.follow_output,
                                                                        ProcessRunner.follow_output)
    try:
        follow = (runner.follow_output(feed.on_line, feed.on_end, first_line_by) if takes else
                  runner.follow_output(feed.on_line, feed.on_end))
    except BaseException:
        logs.closed()
        logs.closed()
        raise
    return feed, follow


def read_handshake(runner: Runner, feed: OutputFeed, deadline: float, name: str,
                   start_timeout: float, multiplex: bool = False) -> HandshakeInfo:
    """Wait (bounded) for the first stdout line ``feed`` receives and parse it (``multiplex``: the host
    asked for the multiplexed broker, see parse_handshake_line)."""
    logs = feed.logs
    lines = feed.first
    exited_at: float | None = None
    # runner.start() (an engine's container create, a pod create) ran before: one that ignores
    # LaunchSpec.deadline, or ended just short of it, must not have its slowness blamed on the plugin
    in_runner_start = feed.made_at - (deadline - start_timeout)
    while True:
        now = time.monotonic()
        if now >= deadline and in_runner_start >= start_timeout * 0.9:
            runner.kill(0)
            raise HandshakeTimeoutError(
                f"starting plugin {name!r} took {in_runner_start:.1f}s in {type(runner).__name__}.start()"
                " (creating and starting its process, container or pod), leaving too little of start_timeout"
                f" ({start_timeout:.1f}s) for its handshake line, so it was killed. Check that the engine or"
                f" cluster answers promptly, or raise start_timeout{_FLAG}.\n{runner.diagnose()}")
        if now >= deadline:
            runner.kill(0)
            raise HandshakeTimeoutError(
                f"plugin {name!r} did not print its handshake line within {start_timeout:.1f}s, so it"
                f" was killed. Raise start_timeout{_FLAG} if it is slow to start; check that it calls serve()"
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
            last = logs.last(20)
            raise PluginExitedError(name, code, last, runner.exit_detail(), advice=runner.exit_advice(code, last))
        assert isinstance(item, str)
        _log.debug("plugin %s handshake: %s", name, printable(item))
        if was_cut(item):  # its runner's line splitter ended it at MAX_LINE, newline or not
            raise MalformedHandshakeError(
                item, f"plugin {name!r} wrote more than {MAX_LINE} bytes to stdout before its first newline, so"
                " no handshake line can follow (go-plugin's host gives up at that size too). Have the plugin"
                " write its logs and other output to stderr, not stdout, until it prints the handshake line")
        return parse_handshake_line(item, multiplex=multiplex)


def refuse_announced(info: HandshakeInfo, versions: Mapping[int, object], multiplex: bool, name: str) -> None:
    """Raise when the plugin's handshake announces what this host cannot take (a version, no multiplexing)."""
    if info.app_version not in versions:
        raise VersionMismatchError(sorted(versions), [info.app_version])
    if multiplex and not info.multiplex:
        raise ProtocolMismatchError(
            f"the host asked for the multiplexed gRPC broker but plugin {name!r} does not"
            " support it; set multiplex_broker=False or upgrade the plugin's go-plugin/plugbay")


def exited_after_handshake(name: str, code: int, tail: list[str]) -> PluginExitedError:
    return PluginExitedError(name, code, tail, "It stopped serving (or never served) the address it"
                             " announced.",
                             when="after printing its handshake line, while the host connected")


def no_socket(name: str, announced: str, dialled: str, reattached: bool, grace: float) -> str:
    """Why the host does not dial the unix socket ``announced`` (``dialled`` on this host): no file is there."""
    here = "" if dialled == announced else f" ({dialled!r} on this host)"
    if reattached:
        return (f"the reattach config of plugin {name!r} names unix socket {announced!r}{here}, which does not"
                " exist: the plugin removed it or has ended. Start the plugin again (a new Client)")
    return (f"plugin {name!r} announced unix socket {announced!r}{here} in its handshake line but never created"
            f" it: no file is at that path {grace}s after the line, so the plugin was killed instead of"
            " dialled until start_timeout. go-plugin plugins listen before they print the line; check that the"
            " plugin prints the path it listens on (in PLUGIN_UNIX_SOCKET_DIR or TMPDIR, as the host set them)"
            " and that nothing removes the socket")


def file_kind(mode: int) -> str:
    """What a path holds that is not a socket (``mode``: its st_mode), as an error names it."""
    return ("a folder" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else
            "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "another kind of file")


def not_a_socket(name: str, announced: str, dialled: str, reattached: bool, mode: int) -> MalformedHandshakeError:
    """The error for an announced unix socket path that holds another kind of file (``mode``: its st_mode).

    A plugin binds its socket before it prints the line; a path that holds a regular file or a folder
    will never be one (bind refuses a path that exists), so it is refused at once, never dialed."""
    kind = file_kind(mode)
    here = "" if dialled == announced else f" ({dialled!r} on this host)"
    source = f"the reattach config of plugin {name!r} names" if reattached else f"plugin {name!r} announced"
    return MalformedHandshakeError(
        f"unix|{announced}",
        f"{source} unix socket {announced!r}{here}, but that path is {kind}, not a socket, so the host"
        " does not dial it. go-plugin plugins print the path of the socket they listen on (in"
        " PLUGIN_UNIX_SOCKET_DIR or TMPDIR, as the host set them)")
