"""SecureConfig: check the plugin executable's checksum before starting it (go-plugin's SecureConfig).

Hashing a file and then running it by path lets a swapper slip in other bytes
between the two. So the process runner runs exactly what was hashed:
:meth:`SecureConfig.verified_fd` copies the file into a sealed in-memory file
(memfd) while hashing the copy, and the runner executes that copy through
``/proc/self/fd/N``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import os
import stat
from dataclasses import dataclass

from plugbay.core.protocol.checks import kind
from plugbay.errors import ChecksumMismatchError, ConfigError, RunnerError, clip


@dataclass(frozen=True)
class SecureConfig:
    """The expected digest of a file the plugin runs; ``hash`` is a hashlib name.

    ``path`` names that file: None means the executable (``cmd[0]``, resolved
    on PATH); for ``cmd=[interpreter, script]`` give ``path=script`` (as it is
    written in ``cmd``), and pass a list of SecureConfigs to check both.
    """

    checksum: bytes
    hash: str = "sha256"
    path: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.checksum, (bytearray, memoryview)):  # kept as bytes: the frozen config is shared
            object.__setattr__(self, "checksum", bytes(self.checksum))
        if isinstance(self.path, (bytes, os.PathLike)):  # as the OS names files; a bad __fspath__ is refused below
            with contextlib.suppress(TypeError, ValueError):
                object.__setattr__(self, "path", os.fsdecode(self.path))
        if not isinstance(self.checksum, bytes) or not self.checksum:
            hint = " (bytes.fromhex(text) for a hex string)" if isinstance(self.checksum, str) else ""
            raise ConfigError(f"SecureConfig needs the expected checksum as raw digest bytes{hint}; got"
                              f" {kind(self.checksum)}")
        expected = _digest_size(self.hash)
        if len(self.checksum) != expected:
            raise ConfigError(
                f"SecureConfig: a {self.hash} digest is {expected} bytes, got {len(self.checksum)};"
                " pass raw bytes (bytes.fromhex(...) for a hex string)"
            )
        if self.path is not None and not isinstance(self.path, str):
            raise ConfigError(f"SecureConfig.path must be None (the executable) or the checked file's name as"
                              f" written in cmd (a str or os.PathLike), got {kind(self.path)}")

    @classmethod
    def of_file(cls, path: str | bytes | os.PathLike[str] | os.PathLike[bytes], hash: str = "sha256", *,
                check_path: str | None = None) -> SecureConfig:
        """The SecureConfig that accepts exactly the file at ``path`` as it is now.

        ``check_path`` is set as :attr:`path` (the file's name in ``cmd``; None: the executable).
        """
        # Not an int: open() would take it as a file descriptor, read the caller's file and close it.
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise ConfigError(f"SecureConfig.of_file takes the path of the plugin file whose checksum to accept"
                              f" (a str, bytes or os.PathLike), got {kind(path)}")
        _digest_size(hash)
        try:
            checksum = _digest(path, hash)
        except ConfigError:  # worded already (not a regular file, an error while reading)
            raise
        except (OSError, ValueError, TypeError) as exc:  # ValueError: a NUL byte; TypeError: a bad __fspath__
            why = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"SecureConfig.of_file cannot read {clip(repr(path))} ({why}); pass the path of"
                              " the plugin file whose checksum to accept") from exc
        return cls(checksum, hash, check_path)

    def check(self, path: str) -> None:
        """Raise ChecksumMismatchError unless ``path`` hashes to ``checksum``."""
        os.close(self.verified_fd(path))

    def verified_fd(self, path: str, *, executable: bool = False) -> int:
        """A sealed in-memory copy of ``path`` whose bytes hash to ``checksum`` (the caller closes it).

        The hash is taken of what was copied, so running the copy runs the checked bytes.
        ``executable``: the file is the one exec'd (not a script an interpreter reads), so what
        the kernel would refuse to exec from disk (no execute bit, a noexec mount) is refused
        here too: the copy would otherwise run it.
        """
        source, size = _open_regular(path, executable)
        try:
            fd = _memfd()
            try:
                actual = _copy(source, size, self.hash, fd, path)
                if not hmac.compare_digest(actual, self.checksum):
                    raise ChecksumMismatchError(
                        f"checksums did not match for plugin file {path!r}: expected {self.hash}"
                        f" {self.checksum.hex()}, found {actual.hex()}. The file was changed or replaced;"
                        " rebuild or reinstall it, or update the expected checksum if the change is trusted."
                    )
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                            | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
                os.lseek(fd, 0, os.SEEK_SET)
                return fd
            except BaseException:
                os.close(fd)
                raise
        finally:
            os.close(source)


# Linux 6.3+: an executable memfd even where vm.memfd_noexec=1 makes memfds non-executable by default
_MFD_EXEC = getattr(os, "MFD_EXEC", 0x10)


def _memfd() -> int:
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        return os.memfd_create("plugbay-verified", flags | _MFD_EXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # a kernel before 6.3 knows no MFD_EXEC; its memfds are all executable
            return os.memfd_create("plugbay-verified", flags)
        if exc.errno == errno.EACCES:  # vm.memfd_noexec=2 refuses every executable memfd
            raise RunnerError(
                "SecureConfig runs the checked copy of the plugin from an in-memory file (memfd), and this"
                " kernel refuses executable memfds (sysctl vm.memfd_noexec=2 in this pid namespace); set it"
                " to 0 or 1 (it can be set per pid namespace), or start the plugin without secure_config"
            ) from exc
        raise


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # O_NONBLOCK: a FIFO would block open()


def _open_regular(path: str, executable: bool) -> tuple[int, int]:
    """An fd of the regular file ``path`` and its size; ConfigError saying what to give instead."""
    try:
        source = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte
        why = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot read plugin file {clip(repr(path))} to check its checksum ({why}); give the"
                          " path of the plugin's file (the executable, or a script as written in cmd), readable"
                          " by this host") from exc
    try:
        return source, _regular(source, path, executable)
    except BaseException:
        os.close(source)
        raise


def _regular(source: int, path: object, executable: bool) -> int:
    """The size of the open file ``source``, refused (ConfigError) unless the OS would run it from there."""
    st = os.fstat(source)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"plugin file {clip(repr(path))} is not a regular file (a {_kind(st.st_mode)});"
                          " give the plugin's executable (or the script it runs) as a path to a file")
    if executable and not _may_exec(st):
        raise ConfigError(f"plugin file {clip(repr(path))} has no execute permission for this host (mode"
                          f" {stat.filemode(st.st_mode)}), so the OS would refuse to run it; chmod +x it, or run"
                          " it through its interpreter (cmd=[interpreter, file] with SecureConfig(path=file))")
    if executable and os.fstatvfs(source).f_flag & os.ST_NOEXEC:
        raise ConfigError(f"plugin file {clip(repr(path))} is on a filesystem mounted noexec, where the OS"
                          " refuses to run programs; move it to a filesystem that allows execution")
    return st.st_size


def _may_exec(st: os.stat_result) -> bool:
    """The execute bit the kernel looks at for this process (any, for root)."""
    if os.geteuid() == 0:
        return bool(st.st_mode & 0o111)
    if st.st_uid == os.geteuid():
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _copy(source: int, size: int, hash: str, sink: int | None, path: object) -> bytes:
    """The digest of the ``size`` bytes of ``source`` (written to ``sink`` as read).

    Bounded by the size fstat gave: a file that grows or shrinks meanwhile is refused, as the
    digest would be of bytes that are not the file's.
    """
    h = hashlib.new(hash)
    left = size
    try:
        while left > 0:
            block = os.read(source, min(left, 1 << 20))
            if not block:
                break
            left -= len(block)
            h.update(block)
            view = memoryview(block)
            while sink is not None and view:
                view = view[os.write(sink, view):]
        changed = left > 0 or os.read(source, 1) != b"" or os.fstat(source).st_size != size
    except OSError as exc:
        raise ConfigError(f"cannot read plugin file {clip(repr(path))} to check its checksum ({exc.strerror});"
                          " give the path of the plugin's file, readable by this host") from exc
    if changed:
        raise ChecksumMismatchError(f"plugin file {clip(repr(path))} changed size while its checksum was taken"
                                    " (it is being written or replaced); start the plugin once the file is"
                                    " complete")
    return h.digest()


def _digest_size(hash: object) -> int:
    try:
        size = hashlib.new(hash).digest_size  # type: ignore[arg-type]
    except (ValueError, TypeError):
        size = 0
    if not isinstance(hash, str) or size == 0:  # 0: a shake, whose digest has no fixed length
        raise ConfigError(f"SecureConfig: unknown hash {hash!r}; use a hashlib name such as 'sha256'")
    return size


def _digest(path: str | bytes | os.PathLike[str] | os.PathLike[bytes], hash: str) -> bytes:
    source = os.open(path, _OPEN_FLAGS)  # its OSError is of_file's to word
    try:
        return _copy(source, _regular(source, path, executable=False), hash, None, path)
    finally:
        os.close(source)
