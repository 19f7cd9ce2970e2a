"""SecureConfig: check the plugin executable's checksum before starting it (go-plugin's SecureConfig).

Hashing a file and then running it by path lets a swapper slip in other bytes
between the two. So the process runner runs exactly what was hashed:
:meth:`SecureConfig.verified_fd` copies the file into a sealed in-memory file
(memfd) while hashing the copy, and the runner executes that copy through
``/proc/self/fd/N``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
from dataclasses import dataclass

from plugbay.core.protocol.checks import kind
from plugbay.errors import ChecksumMismatchError, ConfigError, _clip


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
        except (OSError, ValueError, TypeError) as exc:  # ValueError: a NUL byte; TypeError: a bad __fspath__
            why = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"SecureConfig.of_file cannot read {_clip(repr(path))} ({why}); pass the path of"
                              " the plugin file whose checksum to accept") from exc
        return cls(checksum, hash, check_path)

    def check(self, path: str) -> None:
        """Raise ChecksumMismatchError unless ``path`` hashes to ``checksum``."""
        os.close(self.verified_fd(path))

    def verified_fd(self, path: str) -> int:
        """A sealed in-memory copy of ``path`` whose bytes hash to ``checksum`` (the caller closes it).

        The hash is taken of what was copied, so running the copy runs the checked bytes.
        """
        try:
            source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ChecksumMismatchError(
                f"cannot read plugin file {path!r} to check its checksum: {exc}") from exc
        fd = os.memfd_create("plugbay-verified", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            h = hashlib.new(self.hash)
            while block := os.read(source, 1 << 20):
                h.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view):]
            actual = h.digest()
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


def _digest_size(hash: object) -> int:
    try:
        size = hashlib.new(hash).digest_size  # type: ignore[arg-type]
    except (ValueError, TypeError):
        size = 0
    if not isinstance(hash, str) or size == 0:  # 0: a shake, whose digest has no fixed length
        raise ConfigError(f"SecureConfig: unknown hash {hash!r}; use a hashlib name such as 'sha256'")
    return size


def _digest(path: str | bytes | os.PathLike[str] | os.PathLike[bytes], hash: str) -> bytes:
    h = hashlib.new(hash)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()
