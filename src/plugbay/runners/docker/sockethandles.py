"""The host's handles on the sockets a container announced, so the host dials the socket it checked.

The socket folder is the container's to write in, so a path it announced can be swapped for a
symlink to any host socket between the check and a dial (or a later reconnect). The runner opens
each announced socket once (O_PATH, not following a symlink), checks the file it got, and the
host dials ``/proc/self/fd/N``: that always reaches the checked socket, whatever the folder holds
by then. A handle stays open while anything may dial its path: the plugin's own socket until the
runner ends, a brokered server's until the last channel to it closes (release()), as a gRPC
channel may reconnect at any time and a closed descriptor number could name another file.
"""

from __future__ import annotations

import os
import stat
import threading

from plugbay.errors import RunnerError

# sockets of one container the host may have open handles on at once (its own and brokered ones)
LIMIT = 256


class Unusable(ValueError):
    """An announced socket the host will not dial; the message says why (for the handshake error)."""


class NotThereYet(Unusable):
    """Nothing is at the announced path when it was opened: a plugin that printed its line before it listened
    may make it later (plugbay.testing leaves that to the first get_client())."""


class SocketHandles:
    """O_PATH handles on checked host sockets, one per inode, each with the number of its users."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: dict[tuple[int, int], int] = {}
        self._users: dict[int, int] = {}  # fd -> how many dial_path() answers still use it
        self._closed = False

    def dial_path(self, host_path: str) -> str:
        """``/proc/self/fd/N`` for the socket at ``host_path``; Unusable (saying why) when it is missing
        or not a socket, which is all a symlink can be here."""
        try:
            fd = os.open(host_path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotThereYet("it does not exist (a plugin announces its socket once it listens) in") from None
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
                        raise RunnerError(f"the plugin had the host hold {LIMIT} of its sockets open at once; a"
                                          " plugin announces its own socket and one per brokered server it"
                                          " serves: close brokered channels once their calls are done")
                    self._fds[key], fd = fd, -1
                    held = self._fds[key]
                self._users[held] = self._users.get(held, 0) + 1
        finally:
            if fd >= 0:
                os.close(fd)
        return f"/proc/self/fd/{held}"

    def release(self, path: str) -> None:
        """One user of ``path`` (a dial_path() answer) dials it no more; the last one closes its handle."""
        prefix = "/proc/self/fd/"
        if not path.startswith(prefix) or not path[len(prefix):].isdigit():
            return
        fd = int(path[len(prefix):])
        with self._lock:
            users = self._users.get(fd)
            if users is None:
                return
            if users > 1:
                self._users[fd] = users - 1
                return
            del self._users[fd]
            self._fds = {key: held for key, held in self._fds.items() if held != fd}
        os.close(fd)

    def close(self) -> None:
        """The runner has ended (or detached): no channel of this host dials these sockets any more."""
        with self._lock:
            self._closed = True
            fds, self._fds, self._users = list(self._fds.values()), {}, {}
        for fd in fds:
            os.close(fd)
