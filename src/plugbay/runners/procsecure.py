"""SecureCopies, a base of ProcessRunner: SecureConfig's checked in-memory copies of the files its command
names, and where the command's executable is (as the exec in the child will find it)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from plugbay.errors import ConfigError
from plugbay.runners.base import reuse_refused
from plugbay.runners.command import path_candidates, resolve_executable


class SecureCopies:
    """ProcessRunner's SecureConfig checks (the runner's fields it reads are declared below)."""

    cmd: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None
    skip_host_env: bool
    _lock: threading.Lock
    _ended: str
    _verified: dict[int, int]  # cmd index -> fd of the checked copy it runs
    _checked_exe: str | None  # the file the executable's SecureConfig checked

    @property
    def name(self) -> str:
        raise NotImplementedError

    def check_secure_config(self, secure: Any) -> None:
        """Check SecureConfig(s) and run exactly the checked bytes.

        Each SecureConfig names a file of ``cmd`` (``path``; None: the executable).
        Its verified in-memory copy (``secure.verified_fd``) is what start() runs:
        the executable through ``/proc/self/fd/N`` (argv[0] is kept, die_with_host too), an argument
        (a script) replaced by ``/proc/self/fd/N``.
        """
        configs = list(secure) if isinstance(secure, (list, tuple)) else [secure]
        cwd = self.cwd or os.getcwd()
        verified: dict[int, int] = {}  # published at the end: a kill() meanwhile closes only what it sees
        exe = None
        try:
            for config in configs:
                index = self._cmd_index(config.path, cwd)
                if index in verified or index in self._verified:
                    raise ConfigError(f"two SecureConfigs name the same file {self.cmd[index]!r}; give one")
                target = self._executable({}) if index == 0 else os.path.join(cwd, self.cmd[index])
                exe = target if index == 0 else exe
                verified[index] = config.verified_fd(target, executable=index == 0)
            with self._lock:
                ended = self._ended
                if not ended:
                    self._verified.update(verified)
                    self._checked_exe = exe or self._checked_exe
            if ended:
                raise reuse_refused(f"ProcessRunner for {self.name!r}", ended, "plugin")
        except BaseException:
            for fd in verified.values():
                os.close(fd)
            raise

    def _executable(self, spec_env: Mapping[str, str]) -> str:
        """cmd[0] as the exec in the child finds it: in its folder, on the PATH its environment holds
        (start() builds that environment: the host's unless skip_host_env, then env=, then the spec's)."""
        path = self._child_path(spec_env)
        return resolve_executable(self.cmd[0], {} if path is None else {"PATH": path}, self.cwd)

    def _child_path(self, spec_env: Mapping[str, str]) -> str | None:
        """The PATH the child's environment holds (None: none, the exec then uses os.defpath)."""
        return spec_env.get("PATH", self.env.get("PATH", None if self.skip_host_env else os.environ.get("PATH")))

    def _exec_target(self, spec_env: Mapping[str, str]) -> str:
        """cmd[0]'s file as the exec in the child would find it (ProcessRunner(die_with_host=True) hands it
        to setpriv); OSError as the exec's would be."""
        try:
            target = self._executable(spec_env)
        except ConfigError:
            unrunnable = self._on_path_unrunnable(spec_env)
            if unrunnable is not None:  # the exec's EACCES: something by that name it may not run
                raise PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)} (on the plugin's PATH,"
                                      f" {unrunnable})", self.cmd[0]) from None
            raise FileNotFoundError(errno.ENOENT, "No such file or directory (on the plugin's PATH)",
                                    self.cmd[0]) from None
        if os.path.isdir(target):  # what the kernel's exec answers (EACCES), saying why
            raise PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)} (a folder, not a file)", target)
        if not os.path.isfile(target):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), target)
        if not os.access(target, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), target)
        return target

    def _on_path_unrunnable(self, spec_env: Mapping[str, str]) -> str | None:
        """What a bare cmd[0] names on the child's PATH that its exec may not run (None: nothing there)."""
        if os.sep in self.cmd[0]:
            return None
        path = self._child_path(spec_env)
        for candidate in path_candidates(self.cmd[0], os.defpath if path is None else path, self.cwd):
            if os.path.isdir(candidate):
                return "a folder"
            if os.path.exists(candidate):
                return "not executable or on a noexec mount"
        return None

    def _cwd_error(self) -> OSError | None:
        """The child's chdir error for a cwd it cannot enter (missing, not a folder, a loop), saying it is
        the working folder."""
        if self.cwd is None or os.path.isdir(self.cwd):
            return None
        try:
            os.stat(self.cwd)
            code = errno.ENOTDIR
        except OSError as exc:
            code = exc.errno or errno.ENOENT
        return OSError(code, f"{os.strerror(code)} (the working folder, cwd=)", self.cwd)

    def _explained(self, exc: OSError, spec_env: Mapping[str, str]) -> OSError:
        """A plain start's exec error made to say what its errno hides (the checks the die_with_host start
        makes first): ENOENT names the script whose #! interpreter is missing (a CRLF line end too) or the
        missing working folder, EACCES a folder. Only an explanation with the exec's own errno replaces it;
        ``exc`` when the checks find nothing of that errno (a race, or a cause they cannot see)."""
        from plugbay.runners.hostbound import check_runnable

        found = self._cwd_error()
        if found is None:
            try:
                check_runnable(self._exec_target(spec_env))
            except OSError as error:
                found = error
        return found if found is not None and found.errno == exc.errno else exc

    def _cmd_index(self, path: str | None, cwd: str) -> int:
        if path is None:
            return 0
        wanted = os.path.normpath(os.path.join(cwd, path))
        for i, part in enumerate(self.cmd):
            if i == 0 and os.sep not in part:
                if os.path.normpath(self._executable({})) == wanted:
                    return 0
            elif os.path.normpath(os.path.join(cwd, part)) == wanted:
                return i
        raise ConfigError(f"SecureConfig(path={path!r}) names a file that is not in the plugin command"
                          f" {self.cmd!r}; plugbay can only guarantee the checked bytes run for a file the"
                          " command names: give path= as it is written in cmd (or None for the executable)")

    def _close_verified(self) -> None:
        with self._lock:  # swapped out first: start() takes the dict the same way, so each fd closes once
            verified, self._verified = self._verified, {}
        for fd in verified.values():
            os.close(fd)

