"""The paths behind the host's socket handles, for people: the host dials a unix socket it proved (or a runner
checked) through ``/proc/self/fd/N``, an O_PATH handle on its inode, and gRPC's words name that handle."""

from __future__ import annotations

import os
import re
import stat

_HANDLE = re.compile(r"/proc/self/fd/(\d+)")


def handle_path(address: str) -> str:
    """The path a ``/proc/self/fd/N`` handle was opened at; ``address`` itself when it is none (or closed)."""
    if not _HANDLE.fullmatch(address):
        return address
    try:
        path = os.readlink(address)
        # only a handle on a socket file is one of the host's dial handles: a plugin's own words naming
        # /proc/self/fd/N (its descriptor) must not be told as the file the host holds under that number
        is_socket_file = stat.S_ISSOCK(os.stat(address).st_mode)
    except OSError:  # closed meanwhile: the handle is all there is to show
        return address
    return path if is_socket_file and path.startswith("/") else address  # "socket:[N]": a connection, not a path


def named_handles(text: str) -> str:
    """``text`` (gRPC's details) with each handle this process holds named by the path it stands for."""
    return _HANDLE.sub(lambda found: handle_path(found.group(0)), text) if "/proc/self/fd/" in text else text
