"""The host's handles on the sockets a container announced, so the host dials the socket it checked.

The socket folder is the container's to write in, so a path it announced can be swapped for a
symlink to any host socket between the check and a dial (or a later reconnect). The runner opens
each announced socket once (O_PATH, not following a symlink), checks the file it got, and the
host dials ``/proc/self/fd/N``: that always reaches the checked socket, whatever the folder holds
by then. A handle stays open until the runner ends, because a gRPC channel may reconnect to the
path at any time and a closed descriptor number could name another file.
"""

from __future__ import annotations

import os
import stat
import threading

from plugbay.errors import RunnerError

# distinct sockets one container may have the host dial (the plugin's own and its brokered ones)
LIMIT = 256


class Unusable(ValueError):
    """An announced socket the host will not dial; the message says why (for the handshake error)."""


class SocketHandles:
    """O_PATH handles on checked host sockets, by inode, until close()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: dict[tuple[int, int], int] = {}
        self._closed = False

    def dial_path(self, host_path: str) -> str:
        """``/proc/self/fd/N`` for the socket at ``host_path``; Unusable (saying why) when it is missing
        or not a socket, which is all a symlink can be here."""
        try:
            fd = os.open(host_path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Unusable("it does not exist (a plugin announces its socket once it listens) in") from None
        except OSError as exc:
            raise Unusable(f"it cannot be opened ({exc.strerror}) in") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISSOCK(info.st_mode):
                raise Unusable("it is not a socket (a symlink or file the container made) in")
            key = (info.st_dev, info.st_ino)
            with self._lock:
                if self._closed:
                    raise RunnerError("the container's runner has ended; start a new Client")
                held = self._fds.get(key)
                if held is None:
                    if len(self._fds) >= LIMIT:
                        raise RunnerError(f"the plugin had the host dial more than {LIMIT} sockets; a plugin"
                                          " announces its own socket and one per brokered server it serves")
                    self._fds[key], fd = fd, -1
                    held = self._fds[key]
        finally:
            if fd >= 0:
                os.close(fd)
        return f"/proc/self/fd/{held}"

    def close(self) -> None:
        """The runner has ended (or detached): no channel of this host dials these sockets any more."""
        with self._lock:
            self._closed = True
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)
