"""The local-process runner: the plugin as a child process in its own process group.

Mirrors go-plugin's ``cmdrunner``: the plugin gets the host's environment
(unless ``skip_host_env``) plus the handshake variables, and its stdout/stderr
as pipes. Its stdin is /dev/null, a deliberate difference: go-plugin hands the
plugin the host's own stdin (os.Stdin), but here the plugin leads a process group
of its own (below), and a group that is not the terminal's foreground one is
stopped (SIGTTIN) when it reads the terminal. Unlike cmdrunner it also drops the host's own
go-plugin variables (HOST_SET_VARIABLES): a host that is itself a plugin would
pass on its host's client certificate, and the plugin would serve TLS to a
host dialling plaintext, which then waits out its start timeout. The process leads a new process group so a force
kill reaches everything it started (a ``sh -c`` wrapper and its child alike). A
group, not a new session: on Linux a session is also a scheduler autogroup, and
a plugin alone in a fresh one reached its handshake 1-4 ms later on a loaded
machine (go-plugin's host leaves its plugins in its own session and group).

``kill(grace)`` is the force path (its base ProcessStop, plugbay.runners.procstop):
the Client asks GRPCController.Shutdown first; the runner sends SIGTERM to the
group (and SIGCONT, so a stopped plugin acts on it), waits ``grace`` seconds,
then SIGKILLs the group and reaps the child, so no zombie is left.

``die_with_host=True`` (opt-in): the kernel SIGKILLs the plugin when the host process dies, kill -9
included (plugbay.runners.hostbound); the gateway starts its children so.

Its stdout/stderr and its exit are watched on the host's one shared I/O
thread (follow_output, watch_exit: a pidfd), not by threads of its own.

A host that did not start the plugin can reattach by pid (see
:class:`plugbay.runners.attached.AttachedProcess`, re-exported here).
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from plugbay.core.protocol.exits import exit_said, killed_by
from plugbay.core.protocol.hclog import shown_line
from plugbay.core.protocol.handshake import ENV_MULTIPLEX_GRPC, HOST_SET_VARIABLES
from plugbay.core.protocol.outlive import ENV_OUTLIVE_HOST, OUTLIVE_GRACE, asks_outlive
from plugbay.core.transport.lines import LineSplitter
from plugbay.errors import ConfigError, RunnerError
from plugbay.runners.announced import LocalAddresses, read_networks
from plugbay.runners.attached import UNKNOWN_EXIT_CODE as UNKNOWN_EXIT_CODE  # re-exported
from plugbay.runners.attached import AttachedProcess as AttachedProcess  # re-exported
from plugbay.runners.base import Cancellable, Joinable, LaunchSpec, Runner, killed_while_starting, reuse_refused
from plugbay.runners.command import check_cmd as check_cmd  # re-exported: configcheck and users import it here
from plugbay.runners.command import command_kept as command_kept  # re-exported for ClientConfig
from plugbay.runners.command import command_strings
from plugbay.runners.command import check_env as check_env  # re-exported: configcheck imports it here
from plugbay.runners.command import check_cwd, check_launch_env
from plugbay.runners.command import resolve_executable as resolve_executable  # re-exported
from plugbay.runners.hostbound import bound_command, check_runnable, check_supported, spawn_bound
from plugbay.runners.options import check_grace
from plugbay.runners.ownsocket import OwnListeners
from plugbay.runners.procio import PipeFollower, child_exit_code, follow_pipes, pidfd, watch_pid
from plugbay.runners.proclines import ProcessLines
from plugbay.runners.procsecure import SecureCopies
from plugbay.runners.procstop import ProcessStop
from plugbay.runners.procstopped import plugin_stopped
from plugbay.runners.proctree import ENV_HOST_SESSION, ENV_PLUGIN_ID, ended, ended_or_ending, stat_of
from plugbay.runners.proctree import sweep as sweep  # re-exported: tests and users import it here
from plugbay.runners.session import host_session
from plugbay.runners.stderrpipe import popen_naming_stderr

_TAIL = 50


class ProcessRunner(ProcessStop, ProcessLines, SecureCopies, OwnListeners, LocalAddresses, Runner):
    """Runs ``cmd`` as a local child process. One instance runs the plugin once."""

    def __init__(self, cmd: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, skip_host_env: bool = False,
                 die_with_host: bool = False, trusted_networks: Sequence[str] = (),
                 outlive_grace: float | None = OUTLIVE_GRACE) -> None:
        """``die_with_host``: the plugin gets SIGKILL when this host process dies, even by SIGKILL
        (Linux's parent-death signal; see plugbay.runners.hostbound). ``trusted_networks``: CIDR networks an
        announced TCP address off this machine may be in (a plugin in another network namespace; runners.announced).
        ``outlive_grace``: without die_with_host the plugin outlives this host's death (a kill -9, no kill())
        for a later host to reattach, until no host has been connected for that many seconds in a row; then it
        stops (None: serves on)."""
        self.cmd = command_strings(cmd, "ProcessRunner cmd")
        if not isinstance(die_with_host, bool):
            raise ConfigError(f"ProcessRunner die_with_host must be True or False, got {die_with_host!r}")
        if die_with_host:
            check_supported()
        self.die_with_host = die_with_host
        self.outlive_grace = check_grace(outlive_grace, "ProcessRunner outlive_grace")
        check_env(env or {}, "ProcessRunner env")
        self.env = dict(env or {})
        self.cwd = check_cwd(cwd)
        self.skip_host_env = skip_host_env
        self._trusted = read_networks(trusted_networks, "ProcessRunner trusted_networks")
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._iterating: set[str] = set()
        # one per output stream read: each bounds its unfinished line (see core.transport.lines)
        self.splitters: list[LineSplitter] = []
        self._start_ticks: int | None = None
        self.plugin_id = uuid.uuid4().hex  # in the plugin's environment as PLUGBAY_PLUGIN_ID
        self._verified: dict[int, int] = {}  # cmd index -> fd of the checked copy it runs
        self._checked_exe: str | None = None  # the file the executable's SecureConfig checked
        self._followers: list[PipeFollower] = []
        self._ended = ""  # "killed" or "detached": start() refuses then (one runner, one plugin, once)
        self._group_ended = False  # a stop SIGKILLed the group and reaped its leader: never signal that pgid again
        self._recorded: dict[int, int] = {}  # descendants seen before a Shutdown (record_descendants)
        self._unheld: subprocess.Popen[bytes] | None = None  # a spawn cut short (Ctrl-C in Popen): ended by kill()
        self._spawner: int | None = None  # the pid that started it: in a forked child the plugin is not its
        self._served_at: tuple[str, str] | None = None  # the address it announced: frozen() reads who serves it

    # --- identity -------------------------------------------------------------

    @property
    def name(self) -> str:
        base = os.path.basename(self.cmd[0])
        # `python plugin.py` is better named after the script than the interpreter.
        if base.startswith("python") and len(self.cmd) > 1 and self.cmd[1].endswith(".py"):
            return os.path.splitext(os.path.basename(self.cmd[1]))[0]
        return base

    @property
    def id(self) -> str:
        return str(self._proc.pid) if self._proc is not None else ""

    @property
    def private_transport(self) -> bool:
        return True  # a child process on this machine: go-plugin's own model

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --- lifecycle ------------------------------------------------------------

    @property
    def start_called(self) -> bool:
        return self._proc is not None

    def start(self, spec: LaunchSpec) -> None:
        check_launch_env(spec.env, "LaunchSpec env (ClientConfig.env and the handshake variables)")
        checked = self._checked_exe
        if checked is not None and (found := self._executable(spec.env)) != checked:
            # the checked copy runs, but the command names another file for this environment
            raise ConfigError(f"SecureConfig checked {checked!r}, but with the plugin's environment (a PATH in"
                              f" ClientConfig.env?) {self.cmd[0]!r} is {found!r}; give cmd[0] as a full path")
        verified: dict[int, int] = {}
        with self._lock:
            ended = self._ended
            if not ended and self._proc is None:  # start() closes the checked copies: a kill() meanwhile must not
                verified, self._verified = self._verified, {}  # (Popen runs them by fd number)
        if ended:
            raise reuse_refused(f"ProcessRunner for {self.name!r}", ended, "plugin")
        if self._proc is not None:
            raise RunnerError(f"ProcessRunner for {self.name!r} was already started; make a new runner")
        env: dict[str, str] = {} if self.skip_host_env else dict(os.environ)
        for name in HOST_SET_VARIABLES:
            env.pop(name, None)
        env.update(self.env)
        env.update(spec.env)
        env[ENV_PLUGIN_ID] = self.plugin_id
        env[ENV_HOST_SESSION] = host_session()
        # outlive this host's crash, for a reattach (docs/resilience.md): popen() names the pipe too. Not
        # when multiplexed (Go's ParseBool, as the plugin reads it): that cannot be reattached, as in go-plugin
        outlive = asks_outlive(env.get(ENV_OUTLIVE_HOST), not self.die_with_host) and not asks_outlive(
            env.get(ENV_MULTIPLEX_GRPC), False)
        if spec.socket_dir and "TMPDIR" not in self.env and "TMPDIR" not in spec.env:
            # go-plugin < 1.5 ignores PLUGIN_UNIX_SOCKET_DIR and makes its socket in $TMPDIR;
            # pointing that at the private dir too means kill() removes it either way.
            env["TMPDIR"] = spec.socket_dir
        args = list(self.cmd)
        executable = None
        for index, fd in verified.items():  # run the checked copies (check_secure_config)
            if index == 0:
                executable = f"/proc/self/fd/{fd}"
            else:
                args[index] = f"/proc/self/fd/{fd}"
        if self.die_with_host:  # setpriv execs the plugin's file: found here, as the exec would find it
            try:
                cwd_error = self._cwd_error()  # the child's chdir comes before its exec
                if cwd_error is not None:
                    raise cwd_error
                target = executable or self._exec_target(spec.env)
                check_runnable(target)
                args, executable = bound_command(target, args, keep_argv0=executable is not None), None
            except OSError as exc:
                for fd in verified.values():
                    os.close(fd)
                if verified:  # closed: a second start() would run the unchecked file
                    with self._lock:
                        self._ended = self._ended or "used for a start that failed (its checked copy is closed)"
                raise RunnerError(f"cannot start plugin {self.cmd!r}: {exc}. Check the path, the executable bit"
                                  " and the working directory.") from exc
        self._spawner = os.getpid()
        # made before it runs: a Ctrl-C inside Popen (it waits for the exec) leaves its child known here
        proc: subprocess.Popen[bytes] = subprocess.Popen.__new__(subprocess.Popen)

        ran: list[bool] = []

        def popen() -> None:
            ran.append(True)
            try:
                popen_naming_stderr(proc, env, outlive, self.outlive_grace, args=args, executable=executable,
                                    cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    process_group=0, bufsize=0, pass_fds=tuple(verified.values()))
            finally:  # after the Popen, wherever it ran: until then a closed number could name another file
                for fd in verified.values():
                    os.close(fd)

        def cut_short() -> None:  # Ctrl-C while Popen waited for the exec: it dropped the pipes but not
            self._unheld = proc  # the child, which runs on (a zombie once it ends) where nothing would stop
            self._end_unheld()  # or reap it

        try:
            if self.die_with_host:
                spawn_bound(popen, cut_short)  # started from the one long-lived spawn thread
            else:
                popen()
            self._proc = proc
        except (OSError, ValueError) as exc:
            if not ran:  # the spawn thread could not start: the Popen that closes them never ran
                for fd in verified.values():
                    os.close(fd)
            if verified:  # the checked copies are closed: a second start() would run the unchecked file
                with self._lock:
                    self._ended = self._ended or "used for a start that failed (its checked copy is closed)"
            # ValueError: what the OS cannot take (a NUL byte, an '=' in an environment name), e.g. in a
            # LaunchSpec's env, which no config check saw
            hint = ("Remove NUL bytes from the command, folder and environment, and '=' from environment"
                    " names." if isinstance(exc, ValueError) else
                    "Check the path, the executable bit and the working directory.")
            said = exc if isinstance(exc, ValueError) else self._explained(exc, spec.env)
            raise RunnerError(f"cannot start plugin {self.cmd!r}: {said}. {hint}") from exc
        except BaseException:
            with self._lock:
                self._ended = self._ended or "used for a start that was interrupted"
            if not self.die_with_host:  # spawn_bound ends the child of a spawn it saw interrupted
                cut_short()
            raise
        facts = stat_of(self._proc.pid)  # its start ticks bound kill()'s /proc scan (proctree.family)
        self._start_ticks = facts[1] if facts is not None else None
        with self._lock:
            killed = self._ended == "killed"
        if killed:  # a kill() from another thread found no process yet: end the one just started
            self._stop_process(0)
            raise killed_while_starting(f"ProcessRunner for {self.name!r}", "plugin", "stopped it")

    def has_exited(self) -> bool:
        # /proc shows a zombie at once, while wait(0) may report "running" when another
        # thread is polling the same child at that moment.
        return self._exited_by(ended)

    def ending(self) -> bool:
        # a pending SIGKILL counts: the plugin runs no more code, though its exit (and its socket's close) is a
        # few milliseconds away, in which a call written to it would fail as if it had been in flight
        return self._exited_by(ended_or_ending)

    def _exited_by(self, in_proc: Callable[[int], bool]) -> bool:
        """has_exited()'s and ending()'s answer: not before start(); once reaped, yes without asking /proc
        (its pid may be another process's by now); else what ``in_proc`` reads there of the pid."""
        proc = self._proc
        return proc is not None and (proc.returncode is not None or in_proc(proc.pid))

    def plugin_to_host(self, network: str, address: str) -> tuple[str, str]:
        mapped = super().plugin_to_host(network, address)
        if self._served_at is None:  # the first is the handshake's; brokered servers' come later
            self._served_at = (network, address)
        return mapped

    def frozen(self) -> bool:
        """A stopped plugin (SIGSTOP, a debugger's stop), which acts on nothing but SIGKILL: the topmost processes
        holding its listener are (the server a wrapper such as ``sh -c`` runs: state T; the leader: T or t;
        procstopped)."""
        proc = self._proc
        return proc is not None and proc.returncode is None and plugin_stopped(proc.pid, self._served_at)

    def exit_detail(self) -> str:
        # the diagnosis would only repeat the stderr tail; a signal that ended the plugin only it named
        by = killed_by(None if self._proc is None else self._proc.poll())
        return f"It was killed by {by}." if by else ""

    def wait(self, timeout: float | None = None) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def detach(self) -> None:
        """Leave the process running (kill() still stops it); start() refuses from now on."""
        with self._lock:
            self._ended = self._ended or "detached"

    def watch_exit(self, on_exit: Callable[[int], None]) -> Cancellable:
        """Told by the kernel (a pidfd on the shared I/O loop), not by polling; polls where pidfds are missing."""
        proc = self._proc
        # Once reaped, its pid may name another process: no pidfd then (checked again after opening).
        fd = pidfd(proc.pid) if proc is not None and proc.returncode is None else None
        if fd is not None and proc is not None and proc.returncode is not None:
            os.close(fd)
            fd = None
        if proc is None or fd is None:
            return super().watch_exit(on_exit)
        followers = self._followers

        def exited(code: int) -> None:  # on the loop thread, as the followers' reads
            for follower in list(followers):  # its last lines before its exit is told
                follower.catch_up()
            on_exit(code)
        return watch_pid(fd, lambda: child_exit_code(proc, fd), exited)

    def follow_output(self, on_line: Callable[[str, str], None], on_end: Callable[[str], None],
                      first_line_by: float | None = None) -> Joinable:
        """Both pipes on the shared I/O loop: no thread of this plugin's own.

        ``first_line_by``: read here until stdout's first line (at most until then) before
        handing the pipes to the loop (procio.read_first_line). A subclass that overrides
        stdout_lines() or stderr_lines() is read through them instead (the default: a
        thread per stream), so its override still applies.
        """
        cls = type(self)
        if cls.stdout_lines is not ProcessRunner.stdout_lines or cls.stderr_lines is not ProcessRunner.stderr_lines:
            return super().follow_output(on_line, on_end)
        proc = self._proc
        if proc is None:
            raise RunnerError("ProcessRunner.start() must run before its output is read")
        with self._lock:
            if self._iterating & {"stdout", "stderr"} or self._stop.is_set():
                raise RunnerError("the plugin's stdout and stderr can be read by one reader only")
            self._iterating.update(("stdout", "stderr"))
        pipes = {"stdout": proc.stdout, "stderr": proc.stderr}
        followers, ends = follow_pipes(pipes, on_line, on_end, self._lock, self._tail, self.splitters,
                                       first_line_by, lambda: self._stop.is_set() or self.has_exited())
        self._followers.extend(followers)
        if self._stop.is_set():  # killed while the first line was read here: as _stop_process does
            for follower in followers:
                follower.stop()
        return ends

    def reattach_data(self) -> dict[str, Any]:
        pid = self._proc.pid if self._proc is not None else 0
        return {"kind": "ProcessRunner", "id": str(pid), "pid": pid, "name": self.name,
                "start_time": self._start_ticks, "plugin_id": self.plugin_id}  # recorded at spawn

    # --- output (the pipe reads: proclines.ProcessLines) --------------------------

    def stdout_lines(self) -> Iterator[str]:
        return self._lines("stdout")

    def stderr_lines(self) -> Iterator[str]:
        return self._lines("stderr")

    def diagnose(self) -> str:
        if self._proc is None:
            return f"plugin {self.name!r} was never started"
        code = self._proc.poll()
        state = "still running" if code is None else exit_said(code)
        lines = "\n".join("    " + shown_line(line) for line in list(self._tail)[-10:]) or "    (none)"
        return f"process {self._proc.pid} ({' '.join(self.cmd)}) {state}; last stderr lines:\n{lines}"

    def stderr_tail(self) -> list[str]:
        return list(self._tail)
