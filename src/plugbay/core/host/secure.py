"""SecureConfig: check the plugin executable's checksum before starting it (go-plugin's SecureConfig)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from plugbay.errors import ChecksumMismatchError, ConfigError


@dataclass(frozen=True)
class SecureConfig:
    """The expected digest of the plugin executable; ``hash`` is a hashlib name."""

    checksum: bytes
    hash: str = "sha256"

    def __post_init__(self) -> None:
        if not self.checksum:
            raise ConfigError("SecureConfig needs the expected checksum (raw digest bytes); got none")
        try:
            expected = hashlib.new(self.hash).digest_size
        except ValueError:
            raise ConfigError(f"SecureConfig: unknown hash {self.hash!r}; use e.g. 'sha256'") from None
        if len(self.checksum) != expected:
            raise ConfigError(
                f"SecureConfig: a {self.hash} digest is {expected} bytes, got {len(self.checksum)};"
                " pass raw bytes (bytes.fromhex(...) for a hex string)"
            )

    @classmethod
    def of_file(cls, path: str, hash: str = "sha256") -> SecureConfig:
        """The SecureConfig that accepts exactly the file at ``path`` as it is now."""
        return cls(_digest(path, hash), hash)

    def check(self, path: str) -> None:
        """Raise ChecksumMismatchError unless ``path`` hashes to ``checksum``."""
        try:
            actual = _digest(path, self.hash)
        except OSError as exc:
            raise ChecksumMismatchError(
                f"cannot read plugin executable {path!r} to check its checksum: {exc}") from exc
        if not hmac.compare_digest(actual, self.checksum):
            raise ChecksumMismatchError(
                f"checksums did not match for plugin executable {path!r}: expected {self.hash}"
                f" {self.checksum.hex()}, found {actual.hex()}. The file was changed or replaced;"
                " rebuild or reinstall it, or update the expected checksum if the change is trusted."
            )


def _digest(path: str, hash: str) -> bytes:
    h = hashlib.new(hash)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()
