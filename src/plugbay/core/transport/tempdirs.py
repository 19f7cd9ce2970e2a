"""plugbay's private temp folders, each marked with the process that made it.

A process killed with SIGKILL runs no cleanup, so its folders (and the
sockets in them) stay in the temp dir. Each folder plugbay makes holds a small
marker naming its maker: boot, pid namespace, pid, start time and machine. A
sweep removes a folder only when it can prove all of it: the name is plugbay's,
this user owns the folder and the marker, the maker is gone (an earlier boot of
this machine, or no process with that pid and start time in this pid namespace,
read through a /proc of that namespace), and no socket in it still answers (a
plugin a crashed host left running, waiting to be reattached, keeps its folder).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterable

from plugbay.core.transport.sockets import socket_answers

PREFIX = "plugbay-"
MARKER = ".plugbay-owner"
_MAGIC = "plugbay-owner 1"
_MAX_MARKER = 512
_MAX_ENTRIES = 4096  # a folder holding more is not one of ours as made: left alone


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if it is gone.

    One raw read of a few hundred bytes, no text-file machinery: a plugin's start reads two
    of these and its kill() scans all of /proc (about 4x faster than Path.read_text).
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 8192)  # 52 numeric fields and a 16-byte name: well under 2 KiB
    except OSError:
        return None
    finally:
        os.close(fd)
    # the command name is in parentheses and may itself hold spaces and parentheses
    end = data.rfind(b")")
    if end < 0:
        return None
    return data[end + 2:].decode("ascii", "replace").split()


def start_ticks(pid: int) -> str:
    """When a process started, in clock ticks since boot: tells a pid from a reused one ("" if gone)."""
    fields = proc_stat(pid)
    return fields[19] if fields else ""


def own_start_ticks() -> str:
    """This process's start_ticks(), read through /proc/self: where /proc is another pid namespace's,
    os.getpid() names another process there (or none), /proc/self still this one ("" if not shown)."""
    fields = proc_stat("self")
    return fields[19] if fields else ""


def own_proc() -> bool:
    """Whether /proc shows this process's pid namespace, so that a pid of it can be looked up there
    (``nsenter -p`` or ``unshare -p`` without a /proc of its own: another namespace's processes)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def boot_id() -> str:
    """This machine's boot id ("" when /proc cannot tell)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read(64).strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """This process's pid namespace, as the inode of /proc/self/ns/pid ("" when it cannot be read)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


_boot = ""


def _owner_line() -> str:
    """This process, as the marker names it (read anew after a fork: the pid differs)."""
    global _boot
    if not _boot:
        _boot = boot_id()
    return (f"{_MAGIC} {_boot or '-'} {pid_namespace() or '-'} {os.getpid()} {own_start_ticks() or '-'}"
            f" {_host_name()}\n")


def _host_name() -> str:
    """This machine's name as the marker's last field: ASCII without spaces, each name its own (escaped,
    not dropped: two machines whose names differ only in what was dropped would pass for one)."""
    return socket.gethostname().encode("unicode_escape").decode("ascii").replace(" ", "\\x20") or "-"


def make_tempdir(prefix: str, dir: str | None = None) -> str:
    """``tempfile.mkdtemp`` for plugbay's folders (``prefix`` starts with ``plugbay-``), marked with its maker.

    Returns an absolute path. Raises what ``mkdtemp`` raises. A marker that cannot be written only leaves the
    folder out of later sweeps.
    """
    # absolute: the path goes to a plugin in another folder (a Go plugin resolves it against its own),
    # and rmtree() at the end would look in whatever folder the host moved to meanwhile
    path = tempfile.mkdtemp(prefix=prefix, dir=None if dir is None else os.path.abspath(dir))
    try:
        fd = os.open(os.path.join(path, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except OSError:
        return path
    try:
        os.write(fd, _owner_line().encode("ascii"))
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def private_room(prefix: str, dir: str | None = None) -> tuple[str, bool]:
    """A folder for sockets only this user may reach: ``(path, made)``; ``made``: the caller removes it.

    The temp dir (or ``dir``) itself when it is proven such a folder, plugbay's: its name and marker are
    plugbay's, it is a real folder this user owns, and no one else may enter it (mode 0700), as the
    folder a plugbay host makes for each plugin it launches (and removes, with all in it, after the
    plugin, even a killed one). A folder nested in it would cost a socket path 25 bytes the host's
    length check left no room for. Else a new folder, made by make_tempdir.
    """
    root = os.path.abspath(dir) if dir is not None else tempfile.gettempdir()
    try:
        st = os.lstat(root)
        marked = stat.S_ISREG(os.lstat(os.path.join(root, MARKER)).st_mode)
    except OSError:
        marked = False
    if (marked and os.path.basename(root).startswith(PREFIX) and stat.S_ISDIR(st.st_mode)
            and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077 == 0):
        return root, False
    return make_tempdir(prefix, dir), True


def private_socket(folder: str, stem: str) -> str:
    """A fresh socket path in a private folder (``private_room``): this process's pid and a serial number.

    Unique among every process that may share the folder (the host names its own ``plugin*``; a fork
    or a child that inherited $TMPDIR has its own pid), where a bind on a live socket's path would take
    it over without an error; and short: the folder may be the host's, whose path left names 19 bytes
    (up to 2**28 sockets a process, with a 6-hex-digit pid).
    """
    return os.path.join(folder, f"{stem}{os.getpid():x}-{next(_serial):x}")


_serial = itertools.count(1)


def _maker_gone(line: str) -> bool:
    """Whether the marker's process is proven gone (False: alive, or cannot tell)."""
    parts = line.split()
    if len(parts) != 7 or " ".join(parts[:2]) != _MAGIC or not (parts[4].isascii() and parts[4].isdigit()):
        return False
    boot, namespace, pid, ticks, host = parts[2], parts[3], int(parts[4]), parts[5], parts[6]
    if host != _host_name():
        return False  # a temp dir shared with another machine (NFS): its processes are not seen here
    if not own_proc():
        return False  # a /proc of another pid namespace than this process's: its pids say nothing here
    current_boot = boot_id()
    if boot != "-" and current_boot and boot != current_boot:
        return True  # every process of an earlier boot has ended
    if boot == "-" or boot != current_boot or namespace == "-" or namespace != pid_namespace():
        return False  # a pid of another namespace (a container's) says nothing here
    if ticks == "-":
        return False
    return start_ticks(pid) != ticks


def _read_marker(folder_fd: int) -> str | None:
    try:
        fd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return None
        return os.read(fd, _MAX_MARKER).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _in_use(path: str, depth: int = 0) -> bool:
    """Whether a socket in ``path`` (or a folder in it, two levels down) still answers."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return True
    if len(entries) > _MAX_ENTRIES:
        return True
    for entry in entries:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode) and socket_answers(entry.path):
            return True
        if stat.S_ISDIR(mode) and (depth >= 2 or _in_use(entry.path, depth + 1)):
            return True
    return False


def _stale(path: str) -> tuple[int, int] | None:
    """The (device, inode) of ``path`` when it is a plugbay folder proven left behind (see the module's
    rules), else None."""
    try:
        folder_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(folder_fd)
        if info.st_uid != os.geteuid():
            return None
        line = _read_marker(folder_fd)
    finally:
        os.close(folder_fd)
    if line is None or not _maker_gone(line) or _in_use(path):
        return None
    return info.st_dev, info.st_ino


def default_roots() -> list[str]:
    """Where plugbay makes its folders unless told otherwise: the temp dir (and /var/tmp, for image builds)."""
    roots = [tempfile.gettempdir(), "/var/tmp"]
    return [r for i, r in enumerate(roots) if os.path.isdir(r) and r not in roots[:i]]


def sweep_tempdirs(roots: Iterable[str] | None = None, *, dry_run: bool = False) -> list[str]:
    """Remove plugbay's temp folders whose maker is gone; return their paths.

    ``roots``: the folders to look in (default :func:`default_roots`; a host
    with ``unix_socket_temp_dir`` set adds it). ``dry_run=True`` removes nothing
    and returns what it would remove. This process's own folders are never removed.
    """
    removed: list[str] = []
    for root in default_roots() if roots is None else roots:
        try:
            names = sorted(name for name in os.listdir(root) if name.startswith(PREFIX))
        except OSError:
            continue
        for name in names:
            path = os.path.join(root, name)
            if remove_left_folder(path, dry_run=dry_run):
                removed.append(path)
    return removed


def remove_left_folder(path: str, *, dry_run: bool = False) -> bool:
    """Remove the one folder ``path`` when the sweep would (a plugbay folder proven left behind: see the
    module's rules); True when it was (``dry_run``: would be) removed. A host that adopted a plugin (reattach)
    names the folder its plugin was given once the plugin is gone: the folder is still proven here, as
    any other, never removed for being named."""
    if not os.path.basename(path).startswith(PREFIX):
        return False
    checked = _stale(path)
    if checked is None:
        return False
    try:  # the same folder still: not one swapped in under its name since (a writable root)
        now = os.lstat(path)
    except OSError:
        return False
    if (now.st_dev, now.st_ino) != checked or not stat.S_ISDIR(now.st_mode):
        return False
    if not dry_run:
        try:
            shutil.rmtree(path)  # never follows a symlink: the folder was checked not to be one
        except FileNotFoundError:
            return False
        except OSError:
            if os.path.lexists(path):
                return False
    return True
