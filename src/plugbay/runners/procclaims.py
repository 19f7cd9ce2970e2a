"""Adoption claims on process plugins: a host that reattached to a plugin records itself as its adopter,
so that a sweep (plugbay.runners.proctree.sweep) spares the plugin while that host runs."""

from __future__ import annotations

import logging
import os
import pwd
import re
import secrets
import stat
from pathlib import Path

from plugbay.runners.session import host_session

_log = logging.getLogger("plugbay.runners")

# Adoption records: a host that reattached to a process plugin (proven by its plugin id) writes a
# claim of its own in a folder named by that id, holding its session marker; sweep() spares the plugin
# while any claimant runs, and removes the claims of those gone. One file per claim: two adopters (or
# two Clients of one host) each release only their own. The folder is per user (0700, refused if not
# ours) at a fixed place, so any host finds it.
_CLAIM_NAME = re.compile(r"[0-9a-f]{32}")


def _claims_roots(written: bool = False) -> list[Path]:
    """Where this user's claims are written (``written``: under XDG_RUNTIME_DIR if set, under /tmp,
    and in the user's ~/.cache), or may be found (also the login runtime folder, /run/user/UID).

    A sweep run from cron or a system service has another XDG_RUNTIME_DIR (or none) than the
    host that claimed a plugin from its login session: a claim only under the host's would not
    be found, and the plugin a live host uses would be killed. /tmp is the folder all see; another
    user can take its name first (a claim is only made in a 0700 folder of this user's), so the
    home copy stands then.
    """
    uid = os.getuid()
    bases = [os.environ.get("XDG_RUNTIME_DIR") or "/tmp", "/tmp", *home_cache(uid)]
    bases += [] if written else [f"/run/user/{uid}"]
    roots: list[Path] = []
    for base in bases:
        root = Path(base) / f"plugbay-claims-{uid}"
        if root not in roots:
            roots.append(root)
    return roots


def home_cache(uid: int) -> list[str]:
    try:
        home = pwd.getpwuid(uid).pw_dir
    except (KeyError, OSError):  # a user without a passwd entry (a container's): its HOME
        home = os.environ.get("HOME", "")
    return [os.path.join(home, ".cache")] if home and home != "/" and os.path.isabs(home) else []


def private_folder(folder: Path) -> bool:
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def claim(plugin_id: str) -> str | None:
    """Record this host as an adopter of process plugin ``plugin_id`` (best effort); the claim's
    name, for :func:`release`."""
    if not _CLAIM_NAME.fullmatch(plugin_id):
        return None
    name = f"{os.getpid()}-{secrets.token_hex(8)}"
    made = [root for root in _claims_roots(written=True) if write_session_record(root, plugin_id, name)]
    if not made:
        _log.warning("no claim on plugin %s could be recorded (no private claims folder of this user under"
                     " %s): a sweep may end it while this host uses it", plugin_id,
                     ", ".join(str(root) for root in _claims_roots(written=True)))
    return name if made else None


def write_session_record(root: Path, subfolder: str | None, name: str, extra: str = "") -> bool:
    """Write this host's session (then ``extra``, lines of the caller's) into ``root``[/``subfolder``]/``name``
    whole (a temp file renamed into place), in ``root`` only when it is this user's private folder (made 0700
    if missing); False when it cannot be (a folder someone else made: a record there could be forged or read;
    any other OSError)."""
    for _ in range(3):  # another host may remove an emptied folder meanwhile
        try:
            if not root.parent.is_dir():  # ~/.cache may not exist yet
                root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            root.mkdir(mode=0o700, exist_ok=True)
            if not private_folder(root):
                return False  # someone else's folder: no record rather than one others could forge or read
            folder = root if subfolder is None else root / subfolder
            folder.mkdir(mode=0o700, exist_ok=True)
            tmp = folder / f".{name}.{secrets.token_hex(4)}"
            try:
                tmp.write_text(host_session() + (f"\n{extra}" if extra else ""))
                os.replace(tmp, folder / name)
            except BaseException:
                tmp.unlink(missing_ok=True)  # no half-written record left behind (a full disk, say)
                raise
            return True
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return False


def release(plugin_id: str, name: str | None) -> None:
    """Drop one claim on ``plugin_id`` (kill or detach), and its folders once empty."""
    if not _CLAIM_NAME.fullmatch(plugin_id) or not name or "/" in name or name.startswith("."):
        return
    for root in _claims_roots(written=True):
        drop_claim(root / plugin_id / name)


def drop_claim(claim_file: Path) -> None:
    """Remove one claim file, and its plugin's folder and the claims folder once empty."""
    for path in (claim_file, claim_file.parent, claim_file.parent.parent):
        try:
            path.unlink() if path == claim_file else path.rmdir()
        except OSError:
            pass


def claimants(plugin_id: str) -> dict[Path, str]:
    """The claims on ``plugin_id``: file -> the session marker of the host that made it."""
    found: dict[Path, str] = {}
    if not _CLAIM_NAME.fullmatch(plugin_id):
        return found
    paths: list[Path] = []
    for root in _claims_roots():
        if private_folder(root):
            try:
                paths.extend((root / plugin_id).iterdir())
            except OSError:
                continue
    for path in paths:
        if path.name.startswith("."):
            continue
        try:  # one claim released meanwhile (by its host, or by another sweep) hides no other
            found[path] = path.read_text().strip()
        except OSError:
            continue
    return found


def forget_claims_of_ended(running: set[str]) -> None:
    """Remove the claims on plugins no running process carries any more (their adopters never
    released them: a crash), and claims left half-written."""
    folders: list[Path] = []
    for root in _claims_roots():
        if private_folder(root):
            try:
                folders.extend(f for f in root.iterdir() if _CLAIM_NAME.fullmatch(f.name) and f.name not in running)
            except OSError:
                continue
    for folder in folders:
        try:
            for path in folder.iterdir():
                path.unlink(missing_ok=True)
            folder.rmdir()
        except OSError:
            continue
