"""Which socket listens on a unix socket file, asked of the kernel (sock_diag) instead of connecting to it.

A connection made only to learn the listener (SO_PEERCRED) is a connection all the same: a server that serves
one connection and exits (go-plugin's multiplexed mode) ends on it, and a gRPC server logs a failed handshake.
NETLINK_SOCK_DIAG lists this network namespace's listening unix sockets with the inode and device of the file
each is bound to (UNIX_DIAG_VFS); the one bound to the file a handle names is the socket a connection through
that handle reaches (a file is bound once, at its making, and cannot be bound again). The kernel reports that
inode cut to 32 bits, so a socket bound to another file of the same file system whose number differs by a
multiple of 2**32 would match too (the file's own listener may sit in another namespace, out of the dump): a
match counts only on ext2/3/4, whose inode numbers are 32-bit and stay allocated while referenced (the host's
handle and the listener's bound file both reference it), so the kernel's number is the whole one and the device
and inode name one file. (Not tmpfs: without ``inode64`` its counter starts again at 1 past 2**32 and hands out
numbers live files hold. Not the path a socket was bound to: it is the binder's to rename, or to replace by a
link to another file.) A socket file renamed or hard-linked since its bind is still that file, and matched: a
connection through it reaches the same listener.

None ("the kernel could not tell": the caller connects as before) when sock_diag is not there (a kernel without
CONFIG_UNIX_DIAG, its module not loadable, a seccomp filter or a sandbox such as gVisor that offers no
NETLINK_SOCK_DIAG), when no listener of this namespace is bound to the file (nothing listens yet, or the
listener sits in another network namespace, whose sockets this dump does not list), when the file sits on
another file system (tmpfs, xfs, btrfs, overlayfs: numbers past 2**32, or numbers used twice, are possible
there), or when the kernel's answer is malformed.
"""

from __future__ import annotations

import os
import socket
import struct

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN = 10  # unix sockets report their states in TCP's numbering
_UDIAG_SHOW_VFS = 0x2
_UNIX_DIAG_VFS = 1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_REQUEST = struct.Struct("=BBHIII2I")  # unix_diag_req: family, protocol, pad, states, ino, show, cookie
_MESSAGE = struct.Struct("=BBBBI2I")  # unix_diag_msg: family, type, state, pad, ino, cookie
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_VFS = struct.Struct("=II")  # unix_diag_vfs: inode, device (the kernel's dev_t: major << 20 | minor)
_MINOR_BITS = 20
_EXT_MAGIC = 0xEF53  # statfs f_type of ext2/3/4
_Listener = tuple[int, tuple[int, int]]  # socket inode, (bound file's inode cut to 32 bits, device)


def bound_listener(path: str) -> int | None:
    """The socket inode (as /proc/PID/fd's ``socket:[N]`` names it) of the stream socket listening on the file at
    ``path`` (``/proc/self/fd/N`` for a held handle), found without connecting; None when the kernel cannot tell
    (the module's docstring says when: the caller then connects)."""
    try:
        st = os.stat(path)
        if not _inodes_fit_32_bits(path):
            return None
        listeners = _listening_unix_sockets()
    except (OSError, struct.error):  # struct.error: a reply cut short, malformed
        return None
    wanted = (st.st_ino & 0xFFFFFFFF, os.major(st.st_dev), os.minor(st.st_dev))
    found = {sock for sock, (ino, dev) in listeners
             if (ino, dev >> _MINOR_BITS, dev & (1 << _MINOR_BITS) - 1) == wanted}
    return found.pop() if len(found) == 1 else None


def _inodes_fit_32_bits(path: str) -> bool:
    """Whether the file at ``path`` sits on ext2/3/4, whose inode numbers fit the kernel's 32 bits and are never
    handed out twice while referenced; False when that cannot be told."""
    try:
        import ctypes  # here, not at import: a Python without ctypes (or a static libc) still proves, by a probe

        libc = ctypes.CDLL(None, use_errno=True)  # this process's own symbols, libc's statfs among them
        buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux; f_type leads it
        if libc.statfs(os.fsencode(path), buf) != 0:
            return False
        return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == _EXT_MAGIC
    except (ImportError, OSError, AttributeError):
        return False


def kernel_cannot_tell(folder: str) -> str | None:
    """Why the kernel's answer does not count for a unix socket in ``folder`` (the proof then connects once);
    None when it does: sock_diag answers and the folder sits on ext2/3/4."""
    return sock_diag_missing() or (None if _inodes_fit_32_bits(folder) else
                                   f"{folder} is not on ext2/3/4, whose inode numbers alone fit the kernel's 32 bits")


def sock_diag_missing() -> str | None:
    """Why this process cannot ask sock_diag for listening unix sockets (None: it can)."""
    try:
        _listening_unix_sockets()
    except (OSError, struct.error) as exc:
        return f"sock_diag cannot be asked here: {exc}"
    return None


def _listening_unix_sockets() -> list[_Listener]:
    """(socket inode, (bound file's inode cut to 32 bits, device)) of this network namespace's
    listening SOCK_STREAM unix sockets bound to a file; OSError when sock_diag cannot be asked, struct.error for
    a malformed reply."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)  # the kernel answers at once; a sandbox that swallows the request must not hang a start
        request = _REQUEST.pack(socket.AF_UNIX, 0, 0, 1 << _TCP_LISTEN, 0, _UDIAG_SHOW_VFS,
                                0xFFFFFFFF, 0xFFFFFFFF)
        nl.sendto(_HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP,
                               1, 0) + request, (0, 0))
        found: list[_Listener] = []
        while True:
            data = nl.recv(1 << 16)
            if not data:
                raise OSError("sock_diag closed its answer early")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind = _HEADER.unpack_from(data, offset)[:2]
                if length < _HEADER.size:
                    raise OSError("sock_diag sent a malformed message")
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                    raise OSError(code, f"sock_diag: {os.strerror(code)}")
                entry = _entry(data, offset + _HEADER.size, offset + length)
                if entry is not None:
                    found.append(entry)
                offset += (length + 3) & ~3


def _entry(data: bytes, start: int, end: int) -> _Listener | None:
    """One unix_diag_msg's (socket inode, (file inode, device)); None for a socket of another type or
    state, or bound to no file (an abstract or unnamed one); OSError for a message cut short (skipping it could
    hide a second match)."""
    if end > len(data) or start + _MESSAGE.size > end:
        raise OSError("sock_diag sent a message cut short")
    _, kind, state, _, inode, _, _ = _MESSAGE.unpack_from(data, start)
    if kind != socket.SOCK_STREAM or state != _TCP_LISTEN:
        return None
    vfs: tuple[int, int] | None = None
    at = start + _MESSAGE.size
    while at + _ATTR.size <= end:
        size, attr = _ATTR.unpack_from(data, at)
        if size < _ATTR.size or at + size > end:
            raise OSError("sock_diag sent a malformed attribute")
        if attr == _UNIX_DIAG_VFS and size >= _ATTR.size + _VFS.size:
            vfs = _VFS.unpack_from(data, at + _ATTR.size)
        at += (size + 3) & ~3
    return (inode, vfs) if vfs is not None else None
