"""The steps of plugbay's image builds (plugbay.images): its commands, the lock builds share, and
the checks of what goes into a plugin image.

Each command (debootstrap, docker import, pip) runs in a process group of its own, its output
passed on line by line as progress; a step cut short ends the whole group. Builds in several
processes (pytest workers) take one lock file in turn, waiting a bounded time for it. A plugin
image's tag, entry and folder are checked before the engine builds anything: what it would refuse
(or what would build but never run) is a ConfigError that says what to change. A compiled plugin's
folder (binary_folder) is made once per binary, never written over while another process builds from it,
and removed a day after it was last asked for.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import re
import signal
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plugbay.errors import ConfigError, RunnerError

Progress = Callable[[str], None]
LOCK_WAIT = 900.0  # a base image build takes about a minute, all example images a few


@contextmanager
def build_lock(folder: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold ``folder``/.lock, the one image build at a time of every process building there."""
    # Several pytest processes may ask for the same image at once; a build stuck elsewhere must not
    # keep this one waiting for ever.
    with _flock(folder / ".lock", wait, 0.2, "another image build"):
        yield


@contextmanager
def _flock(path: Path, wait: float, poll: float, holder: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # read-only: a lock file another user made (a shared cache) locks as well; flock ignores the fd's mode
    with open(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)) as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunnerError(f"{holder} has held {path} for over {wait:.0f} s; let it finish, or end it"
                                      " (`fuser -v` on that file names it) and try again") from None
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_step(cmd: Sequence[str], progress: Progress, *, what: str, stdin: Any = None) -> None:
    """Run ``cmd`` to its end, each output line to ``progress``; RunnerError when it fails."""
    # its own process group, ended with it when reading is cut short (Ctrl-C, a progress callback that
    # raises): a debootstrap left running would write on under a rootfs folder being removed
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            progress(f"{what}: {line.rstrip()}")
        code = proc.wait()
    except BaseException:
        _end_group(proc)
        raise
    finally:
        proc.stdout.close()
    if code != 0:
        raise RunnerError(f"{what} failed (exit {code}): {' '.join(cmd)}; see the lines above")


def _end_group(proc: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- what goes into a plugin image ---------------------------------------------

_FOLDER_PRUNE_AFTER = 24 * 3600.0  # a folder of an older binary nobody asked for since: dead weight
_COPY_PRUNE_AFTER = 600.0  # a half-made folder (a copy of a few MB cut short) older than this: left by a dead process
_FOLDERS_LOCK_WAIT = 60.0  # held for a stat and a touch, or for removing a few old folders
# the fixed folders plugbay's Go example images were built from before binary_folder: nothing reads them now
_RETIRED = ("kv-go-src", "counter-go-src")


def binary_folder(cache: Path, binary: Path, name: str) -> Path:
    """A plugin folder in ``cache`` holding ``binary`` alone, as ``name``: one folder per binary content,
    made whole elsewhere and renamed into place, then never written again. Folders nobody asked for in
    24 h are removed (by the next process asking for another binary).

    The folder was one fixed path each build copied the binary over: a process (a pytest-xdist worker)
    asking for the same image while another one hashed or copied that folder into its build context
    truncated the file under it, and the image got a cut binary (or a hash that never matched again)."""
    with open(binary, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()[:16]
    folder = cache / f"{name}-src-{digest}"
    # Handing a folder out (find it, touch it) and pruning (check a folder's age, remove it) each hold
    # this lock: either the prune removes the folder first and this process makes it again, or the touch
    # comes first and the prune finds it fresh. Without it a folder could be found, then removed before
    # it was touched, and this process handed out a folder that was gone.
    lock = cache / ".folders.lock"
    with _flock(lock, _FOLDERS_LOCK_WAIT, 0.01, "another process handing out or pruning plugin folders"):
        if _hand_out(folder, name):
            return folder
    made = Path(tempfile.mkdtemp(prefix=f".{name}-src-", dir=cache))
    try:
        # mkdtemp makes it 0o700; the folder's mode goes into the image's content hash (tree_hash) and
        # onto /plugin in the image, which runs as another user: readable and searchable by all
        made.chmod(0o755)
        shutil.copy2(binary, made / name)
        with _flock(lock, _FOLDERS_LOCK_WAIT, 0.01, "another process handing out or pruning plugin folders"):
            if not made.is_dir():
                raise RunnerError(f"{made}, the copy of {binary} being made, was removed meanwhile (as a copy"
                                  f" left for over {_COPY_PRUNE_AFTER:.0f} s); ask for the image again")
            try:
                made.rename(folder)
            except OSError:
                if not _hand_out(folder, name):  # another process's whole folder got there first: that one
                    raise
            _prune(cache, name, keep=folder)
    finally:
        shutil.rmtree(made, ignore_errors=True)
    return folder


def _hand_out(folder: Path, name: str) -> bool:
    if not (folder / name).is_file():
        return False
    try:
        os.utime(folder)  # asked for now: the prune's clock starts again
    except OSError:  # another user's folder (a shared cache): not refreshed, so their prune may remove it a day
        pass  # after it was made; the lock keeps it whole until this returns, and a later ask makes it again
    return True


def _prune(cache: Path, name: str, keep: Path) -> None:
    """Remove, under the folders lock, ``name``'s folders nobody asked for in 24 h, the copies cut short
    (``.name-src-*``) left for over 10 minutes, and the retired fixed folders."""
    now = time.time()
    olds = [(old, _FOLDER_PRUNE_AFTER) for old in [*cache.glob(f"{name}-src-*"), *(cache / r for r in _RETIRED)]]
    olds += [(old, _COPY_PRUNE_AFTER) for old in cache.glob(f".{name}-src-*")]
    for old, after in olds:
        try:
            if old != keep and old.stat().st_mtime < now - after:  # asked for (or made) since
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue


# Docker's reference grammar (distribution/reference): an optional registry host, then lowercase path
# components, then an optional tag. The engine answers anything else with a bare 400.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_REFERENCE = re.compile(rf"(?P<name>(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::[\w][\w.-]{{0,127}})?")
IGNORED = ("__pycache__", "*.pyc")  # left out of the copy (and the hash): the image compiles its own


def check_tag(tag: object) -> None:
    """ConfigError unless ``tag`` is a reference the engine takes for a build's tag."""
    match = _REFERENCE.fullmatch(tag) if isinstance(tag, str) else None
    if match is None or len(match["name"]) > 255 or re.fullmatch(r"[a-f0-9]{64}", match["name"]):
        raise ConfigError(f"image tag {tag!r:.80} is not a Docker image reference: give NAME[:TAG], the name in"
                          " lowercase letters and digits with . _ - or / between them (a registry host may lead,"
                          " e.g. localhost:5000/my-plugin:1), the tag up to 128 letters, digits, _ . or -")


def _ignored(name: str) -> bool:
    return name == "__pycache__" or name.endswith(".pyc")


def check_entry_files(entry: Sequence[str], plugin_dir: Path) -> None:
    """ConfigError when the entry runs a /plugin file that the plugin folder does not hold (the image would
    build, then exit 126/127 at every start): an absolute ``/plugin/...`` program must be an executable file,
    the script of ``python /plugin/...`` a file."""
    program, script = entry[0], entry[1] if len(entry) > 1 else ""
    if re.fullmatch(r"(?:.*/)?python[0-9.]*", program) and not script.startswith("-"):
        checked, needs_exec = script, False
    else:
        checked, needs_exec = program, True
    path = posixpath.normpath(checked)
    if not path.startswith("/plugin/") or any(_ignored(part) for part in path.split("/")):
        return  # not in the plugin folder (or not copied, compiled in the image): nothing to check here
    source = plugin_dir / path[len("/plugin/"):]
    if not source.is_file():  # follows links, as the copy does
        raise ConfigError(f"the entry runs {checked}, but {source} is not a file; put it in the plugin folder"
                          f" {plugin_dir} (copied to /plugin) or fix the entry {list(entry)!r:.200}")
    if needs_exec and not source.stat().st_mode & 0o111:
        raise ConfigError(f"the entry runs {checked}, but {source} is not executable; `chmod +x {source}`"
                          " (or run it through its interpreter, e.g. [\"python\", \"/plugin/plugin.py\"])")


def _what(path: Path) -> str:
    if path.is_symlink():
        return f"a link to {os.readlink(path)}, which does not exist (or links round in a loop)"
    mode = path.lstat().st_mode
    return "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device file"


def tree_hash(h: Any, root: Path, rel: str = "", above: frozenset[str] = frozenset()) -> None:
    """Hash what the build's copytree copies of ``root``: symlinks followed, modes kept (a chmod +x
    changes the image), __pycache__ and .pyc left out. What it cannot copy (a dangling link, a pipe,
    a socket, something it cannot read) is a ConfigError naming it."""
    real = os.path.realpath(root)
    if real in above:  # copytree would copy it without end
        raise ConfigError(f"{root} links back to {real}, a folder it is in; remove the link to build the image")
    try:
        h.update(f"{rel}/\0{stat.S_IMODE(root.stat().st_mode):o}\0".encode())
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)  # read to its end: closed
        for entry in entries:
            path, name = Path(entry.path), f"{rel}/{entry.name}" if rel else entry.name
            if _ignored(entry.name):
                continue
            if path.is_dir():  # these follow symlinks, as copytree does (a loop of links: neither)
                tree_hash(h, path, name, above | {real})
            elif path.is_file():
                h.update(f"{name}\0{stat.S_IMODE(path.stat().st_mode):o}\0".encode())
                with open(path, "rb") as file:
                    h.update(hashlib.file_digest(file, "sha256").digest())
            else:
                raise ConfigError(f"{path} is {_what(path)}: a plugin image holds files and folders only;"
                                  " remove it from the plugin folder (or move it out) to build the image")
    except PermissionError as exc:
        raise ConfigError(f"{exc.filename or root} cannot be read ({exc.strerror}); make it readable"
                          " (chmod u+r, and u+x for a folder) to build the image") from None


def make_readable(root: Path) -> None:
    """``chmod -R a+rX`` the build context's copy of the plugin: the image runs as uid 10001, not the owner.
    (The hash covers the source's modes, from which these follow.)"""
    for folder, _, files in os.walk(root):
        os.chmod(folder, stat.S_IMODE(os.stat(folder).st_mode) | 0o555)
        for name in files:
            path = os.path.join(folder, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            os.chmod(path, mode | 0o444 | (0o111 if mode & 0o111 else 0))
