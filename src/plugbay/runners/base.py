"""The Runner interface: how a plugin is started, watched, stopped and reached.

Mirrors go-plugin's ``runner.Runner``: a Runner starts the plugin and yields its
stdout (which carries the handshake line) and stderr (logs) as line streams; an
AttachedRunner is what remains once a plugin runs, and is all a reattaching
host gets back. Address translation maps what the plugin announces to what the
host can dial (a socket in a bind mount, a published port, a port-forward).
"""

from __future__ import annotations

import logging
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from plugbay.core.protocol.exits import exit_said, not_run_advice
from plugbay.errors import AnnouncedUnreachableError as AnnouncedUnreachableError, ConfigError, RunnerError, clip
from plugbay.runners.startdeadline import (attach_time_left as attach_time_left, start_deadline as start_deadline,
                                           starting_until as starting_until)

_log = logging.getLogger("plugbay.runner")
_EXIT_POLL = 0.25  # the default exit watcher's poll (a runner with an exit event overrides watch_exit)


NOT_LISTENING = "nothing listens there"  # unproven_listener()'s answer that a wait may change
# in unproven_listener()'s answer where no process holds the listener (passed in flight, or its server's process
# exited a moment ago): the plugin's exit may follow and explain it, so the host waits a moment for one
HELD_BY_NONE = "by none at all"
# unproven_listener(connect=False)'s answer where only a connection can tell who listens (its SO_PEERCRED): the
# kernel's socket table cannot (no sock_diag, a listener of another network namespace, a process hiding its files)
ASK_A_CONNECTION = "only a connection to it can tell who listens there"
# what a reattached Client's refusal of an address says to do (it follows "if its command hands the serving to a
# process it does not start"): a reattach proves every address whatever the ClientConfig says, as the process was
# started by someone else, so no setting of the reattaching Client opts out; a Client that starts it does
REATTACH_OPT_OUT = ("no reattach can reach that plugin, as a reattach dials only what the proven plugin process (or"
                    " one it started) listens on, whatever the reattaching ClientConfig says: use the plugin from the"
                    " Client that started it, or stop it and start it again from a Client of your own with"
                    " ClientConfig(trust_announced_address=True)")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Joinable(Protocol):
    def join(self, timeout: float | None = None) -> bool: ...


class _PollingExitWatch:
    """The default exit watcher: a thread polling wait(); cancel() stops and joins it."""

    def __init__(self, runner: AttachedRunner, on_exit: Callable[[int], None]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(runner, on_exit),
                                        name=f"plugbay-watch-{runner.name}", daemon=True)
        self._thread.start()

    def _run(self, runner: AttachedRunner, on_exit: Callable[[int], None]) -> None:
        while not self._stop.is_set():
            code = runner.wait(_EXIT_POLL)
            if code is not None:
                if not self._stop.is_set():
                    on_exit(code)
                return

    def cancel(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)


class _ThreadedOutput:
    """The default output follower: one thread per stream iterating the runner's line streams."""

    def __init__(self, runner: Runner, on_line: Callable[[str, str], None],
                 on_end: Callable[[str], None]) -> None:
        self._threads = []
        for stream, lines in (("stdout", runner.stdout_lines()), ("stderr", runner.stderr_lines())):
            thread = threading.Thread(target=self._pump, args=(lines, stream, on_line, on_end),
                                      name=f"plugbay-{stream}-{runner.name}", daemon=True)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(lines: Iterator[str], stream: str, on_line: Callable[[str, str], None],
              on_end: Callable[[str], None]) -> None:
        try:
            for line in lines:
                on_line(stream, line)
        except Exception as exc:  # a broken stream ends the pump, never the host
            _log.debug("reading plugin %s failed: %s", stream, exc)
        finally:
            on_end(stream)

    def join(self, timeout: float | None = None) -> bool:
        for thread in self._threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)


@dataclass(frozen=True)
class LaunchSpec:
    """What the Client hands a Runner: the go-plugin environment and a host folder.

    ``env`` holds the handshake variables (cookie, versions, ports, client cert).
    ``socket_dir`` is a private host folder for unix sockets; a runner that puts
    the plugin elsewhere (a container) mounts it and rewrites
    PLUGIN_UNIX_SOCKET_DIR, then maps paths back in plugin_to_host().
    ``deadline`` (a time.monotonic() time; None: no bound) is when the Client's start_timeout runs
    out: a runner whose start() waits on something slow (an engine, an API server) stops waiting
    then. A runner may ignore it (the field came later): its start() is then bounded by itself alone.
    """

    env: Mapping[str, str]
    socket_dir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    deadline: float | None = None

    def env_without_host_folder(self) -> dict[str, str]:
        """``env`` less the host's socket folder and its group: a path and a group of this host, which
        mean nothing where no folder of this host is mounted (a pod, a container reached over TCP)."""
        return {k: v for k, v in self.env.items() if k not in HOST_FOLDER_VARIABLES}


# the variables of LaunchSpec.env that name the host's socket folder (go-plugin's names)
HOST_FOLDER_VARIABLES = ("PLUGIN_UNIX_SOCKET_DIR", "PLUGIN_UNIX_SOCKET_GROUP")


class SecureCheck(Protocol):
    """What a runner needs of a SecureConfig (plugbay.SecureConfig) to verify what it starts."""

    @property
    def hash(self) -> str: ...

    @property
    def checksum(self) -> bytes: ...

    @property
    def path(self) -> str | None: ...

    def check(self, path: str) -> None: ...


class AttachedRunner(ABC):
    """A plugin that is running: wait for it, stop it, reach it."""

    @property
    def name(self) -> str:
        """A human-friendly name for messages (a Runner says more: the executable, the image)."""
        return self.id or "plugin"

    def has_exited(self) -> bool:
        """Whether the plugin has ended; cheap enough to ask before every call, never blocks."""
        return self.wait(0) is not None

    def ending(self) -> bool:
        """Whether the plugin has ended, or can no longer read what is sent to it (a local process with a
        SIGKILL pending): a call made now would never reach it. Cheap enough to ask before every call."""
        return self.has_exited()

    @property
    @abstractmethod
    def id(self) -> str:
        """A unique id of the running plugin: pid, container id, namespace/pod."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the plugin ends and return its exit code (None on timeout)."""

    @abstractmethod
    def kill(self, grace: float = 2.0) -> None:
        """Stop the plugin (after ``grace`` seconds, by force) and free what it held. Idempotent."""

    def record_descendants(self) -> None:
        """Called before the plugin is asked to stop (GRPCController.Shutdown), while it still runs: note
        what kill() must end and cannot find once the plugin has exited (a local process's descendants,
        which lose their parent link to it then). Default: nothing (a container or a pod ends whole)."""

    def force_kill(self) -> None:
        """Stop the plugin now, also when a kill() was cut short (Ctrl-C in its grace wait) and
        counts as done; runners whose kill() is guarded by that override it."""
        self.kill(0)

    def plugin_to_host(self, network: str, address: str) -> tuple[str, str]:
        """Map an address the plugin announced to one the host can dial."""
        return network, address

    def unproven_listener(self, network: str, address: str, conn: socket.socket | None = None,
                          connect: bool = True) -> str | None:
        """Why the host may not dial ``address`` (a plugin_to_host() answer for the handshake's address) now, or
        None; NOT_LISTENING while nothing listens there (yet). A runner that mapped the address itself (a mounted
        folder, a published or forwarded port) has nothing to prove; the process runner proves who listens
        there (runners.ownsocket). ``conn``: a connection the host made there itself, proven on its own peer.
        ``connect=False``: no connection is made to ask (a server that serves one connection would end on it):
        ASK_A_CONNECTION where only one could tell."""
        return None

    @property
    def maps_unix_to_own_handles(self) -> bool:
        """Whether plugin_to_host()'s unix addresses are handles this runner opened on a socket it checked
        (DockerRunner's): the Client pins nothing more (told by the runner, not by text a plugin writes)."""
        return False

    def host_to_plugin(self, network: str, address: str) -> tuple[str, str]:
        """Map a host address to one the plugin can dial (brokered callbacks)."""
        return network, address

    def connect_detail(self) -> str:
        """What the runner heard of why the host cannot reach the plugin (a port-forward's error from the
        API server); "" when nothing. A start that times out connecting adds it to its error."""
        return ""

    def release_address(self, network: str, address: str) -> None:
        """The host dials ``address`` (a plugin_to_host() answer) no more: a brokered channel to it
        closed. A runner that holds something for each mapped address frees it here."""

    @property
    def broker_socket_dir(self) -> str | None:
        """The host folder the plugin can reach, where the broker's unix listeners for brokered callbacks
        must go (a container's bind-mounted socket folder); None: the Client's own private folder.

        A reattaching Client makes a private folder of its own, which a plugin elsewhere never sees."""
        return None

    @property
    def private_transport(self) -> bool:
        """Whether the host reaches the plugin only through its private folder (a unix socket).

        False (the safe default) when the connection leaves it: a TCP port, a
        container bridge, a pod network. Then AutoMTLS is on unless the
        ClientConfig turns it off, and a plugin that announces no certificate
        is refused (TLSRequiredError) instead of used in plaintext.
        """
        return False

    @property
    def exit_notice_time(self) -> float:
        """Seconds this runner may take to learn the plugin ended after its connection broke.

        A call that fails UNAVAILABLE waits up to this long for wait() before it
        is reported as a live plugin being unreachable rather than a death. A
        local process's exit is known at once; an engine or an API server
        answers later, most of all on a loaded machine.
        """
        return 0.5

    def watch_exit(self, on_exit: Callable[[int], None]) -> Cancellable:
        """Call ``on_exit(code)`` once, as soon as the plugin ends (from another thread); cancel() stops it.

        The default polls wait() in a thread; a runner that can be told of the
        exit (the process runner's pidfd) overrides it. ``on_exit`` must not block.
        """
        return _PollingExitWatch(self, on_exit)

    def exit_words(self, code: int) -> str:
        """How the plugin ended, after its name in a message ("exited with code 3"), from wait()'s ``code``."""
        if code == -1:  # UNKNOWN_EXIT_CODE (runners.attached): an engine that lost the code reports it too
            return "exited with code -1 (its exit code is unknown; a child process killed by SIGHUP reports -1 too)"
        return exit_said(code)

    def frozen(self) -> bool:
        """Whether the plugin is frozen (a paused container; SIGSTOPped, the topmost processes holding its
        listener, such as the server a ``sh -c`` wrapper waits for; a traced one, not the leader, never counts:
        a tracer's stop at each system call looks the same) and can answer nothing:
        kill() then does not ask it to stop (GRPCController.Shutdown would wait out its timeout) and has the
        runner end it (thawed first), and a restart of a plugin that stopped answering has force_kill() end it
        without a thaw, which would let it finish calls whose callers were told it ended. Runners that can
        tell override it. Cheap; False when it cannot tell."""
        return False

    def exit_reason(self, code: int) -> str:
        """What ended the plugin beyond its exit ``code`` (a container the kernel killed for memory), for the
        error of a call it left; "" when nothing more is known. Asked once the plugin has ended; best effort."""
        return ""

    def detach(self) -> None:
        """Free what this host holds for the plugin (watchers, port-forwards, API clients); leave it running."""

    def adopted(self) -> None:
        """A Client reattached through this runner and the plugin answered: record this host as its owner
        where the runner keeps one (a container's name, for sweeps). Only now: a reattach that failed (or a
        host killed while reattaching) must leave the plugin its live owner's. Best effort; default: nothing."""

    def reattach_data(self) -> dict[str, Any]:
        """JSON-serialisable facts that let another host process attach again."""
        return {"kind": type(self).__name__, "id": self.id}


def reuse_refused(who: str, ended: str, thing: str) -> RunnerError:
    """start() on a runner that was killed or detached: what it made then, nothing could end."""
    return RunnerError(f"{who} was {ended}; a runner runs one {thing} once: make a new runner")


def killed_while_starting(who: str, thing: str, undone: str) -> RunnerError:
    """start() that a kill() from another thread met: what it had made is ended (``undone``) again."""
    return RunnerError(f"{who} was killed while it started the {thing}; plugbay {undone} again."
                       " Make a new runner to start the plugin")


class Runner(AttachedRunner):
    """A plugin to be started. One Runner runs one plugin once."""

    @property
    @abstractmethod
    def name(self) -> str:
        """A human-friendly name: the executable, the image."""

    @abstractmethod
    def start(self, spec: LaunchSpec) -> None:
        """Start the plugin; return once its output streams can be read."""

    @property
    def start_called(self) -> bool:
        """Whether start() was called on this runner: a Client refuses such a runner before touching it,
        as its failed start would end a plugin someone else runs. Default False: a runner that cannot
        tell refuses a second start() itself, and the Client then stops it."""
        return False

    @abstractmethod
    def stdout_lines(self) -> Iterator[str]:
        """The plugin's stdout, line by line, ending when the plugin ends or is killed."""

    @abstractmethod
    def stderr_lines(self) -> Iterator[str]:
        """The plugin's stderr, line by line, ending when the plugin ends or is killed."""

    def follow_output(self, on_line: Callable[[str, str], None], on_end: Callable[[str], None],
                      first_line_by: float | None = None) -> Joinable:
        """Hand every stdout and stderr line to ``on_line(stream, line)``, then ``on_end(stream)`` per stream.

        Instead of stdout_lines()/stderr_lines() (each stream has one reader).
        Callbacks come from another thread and must not block; the streams end
        as their iterators do (the plugin ends or is killed); join() waits for
        both. The default reads each stream in a thread; the process runner
        reads every plugin's pipes on one shared thread. ``first_line_by`` (a
        time.monotonic() deadline) lets a runner first read, on the calling
        thread, until stdout's first line (the process runner does); the
        default ignores it.
        """
        return _ThreadedOutput(self, on_line, on_end)

    @abstractmethod
    def diagnose(self) -> str:
        """Best-effort facts on why the plugin failed: state, exit code, last log lines."""

    def exit_detail(self) -> str:
        """What to add to a "plugin exited before its handshake" error besides its stderr tail."""
        return self.diagnose()

    def exit_advice(self, code: int | None, last: Sequence[str]) -> str | None:
        """What to do about a plugin that exited with ``code`` before its handshake, its last stderr lines
        ``last``, when they say more than the default advice (the magic cookie): a shell's 127 or 126 with its
        refusal. None: the default."""
        return not_run_advice(code, last, "the plugin's command", "on the PATH",
                              "Check the command (and each program a shell wrapper of it runs), the PATH it runs"
                              " with, and the programs' permissions; run it by hand to see.")

    def check_secure_config(self, secure: SecureCheck | Sequence[SecureCheck]) -> None:
        """Verify that what this runner starts is what ``secure`` (one SecureConfig or a list) expects.

        Raises ChecksumMismatchError on a mismatch; the default runner cannot verify anything.
        """
        raise ConfigError(f"secure_config is not supported by runner {type(self).__name__};"
                          " drop it or use a runner that can verify what it starts")


ReattachFunc = Callable[[Mapping[str, Any]], AttachedRunner]

# Runner kinds register how to rebuild an AttachedRunner from reattach_data().
_REATTACHERS: dict[str, ReattachFunc] = {}


def register_reattacher(kind: str, func: ReattachFunc) -> None:
    _REATTACHERS[kind] = func


# plugbay's own runner kinds, imported on first reattach so no caller has to import them first.
_BUILT_IN = {"ProcessRunner": "plugbay.runners.process", "DockerRunner": "plugbay.runners.docker.runner",
             "KubernetesRunner": "plugbay.runners.kubernetes.runner"}


def reattach_runner(data: Mapping[str, Any]) -> AttachedRunner:
    kind = str(data.get("kind", ""))
    if kind not in _REATTACHERS and kind in _BUILT_IN:
        import importlib

        importlib.import_module(_BUILT_IN[kind])
    func = _REATTACHERS.get(kind)
    if func is None:
        raise ConfigError(
            f"no runner kind {clip(repr(kind), 80)} can reattach (known: {sorted({*_REATTACHERS, *_BUILT_IN})});"
            " import the module of the runner that started the plugin before reattaching"
        )
    return func(data)
