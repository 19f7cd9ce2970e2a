"""The folder a compiled plugin's image is built from (imagesteps.binary_folder), under processes at once.

pytest-xdist workers each ask for the kv-go example image in their session: each one's recipe copied
the Go binary over one fixed folder, while another worker hashed that folder or copied it into its
build context, and read the binary cut short.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from plugbay import images, imagesteps
from tests import gobuild

REPO = Path(__file__).resolve().parent.parent


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.go
@pytest.mark.skipif(gobuild.go_missing_reason() is not None, reason=gobuild.go_missing_reason() or "")
def test_the_kv_go_recipes_folder_holds_the_whole_binary_while_another_process_asks_for_it() -> None:
    binary = gobuild.build_go("kv_plugin").read_bytes()
    folder = images.EXAMPLES["kv-go"].source()  # made (or found) before the other process starts
    other = _python("""
        import sys
        from plugbay import images
        print("asking", flush=True)
        for _ in range(30):
            images.EXAMPLES["kv-go"].source()
        """)
    try:
        assert other.stdout is not None and other.stdout.readline() == "asking\n"
        reads, cut = 0, 0
        while True:  # at least one read, and reads for as long as the other process asks
            done = other.poll() is not None
            reads += 1
            cut += (folder / "kv_plugin").read_bytes() != binary
            if done:
                break
        _, err = other.communicate(timeout=120)
    finally:
        other.kill()
        other.wait()
    assert other.returncode == 0, err
    assert cut == 0, f"{cut} of {reads} reads of {folder / 'kv_plugin'} found another file than the binary"
    assert images.EXAMPLES["kv-go"].source() == folder


_ASK_TOGETHER = """
    import sys, time
    from pathlib import Path
    from plugbay.imagesteps import binary_folder
    print("ready", flush=True)  # imported: what is left to do is the call itself
    start = Path(sys.argv[3])
    while not start.exists():
        time.sleep(0.001)
    print(binary_folder(Path(sys.argv[1]), Path(sys.argv[2]), "plug"))
    """


def _ask_together(cache: Path, start: Path, *binaries: Path) -> list[Path]:
    """binary_folder(cache, binary, "plug") for each binary, each in a process of its own, all started at once."""
    procs = [_python(_ASK_TOGETHER, str(cache), str(binary), str(start)) for binary in binaries]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.communicate(timeout=60)
        start.touch()
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert [proc.returncode for proc in procs] == [0] * len(procs), results
    return [Path(out.strip()) for out, _ in results]


def _binary(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o755)
    return path


def test_two_processes_making_one_binarys_folder_at_once_share_one_whole_folder(tmp_path: Path) -> None:
    binary = _binary(tmp_path / "plugin-binary", bytes(range(256)) * 16384)  # 4 MiB: its copy takes a while
    for round_ in range(5):
        cache = tmp_path / f"cache-{round_}"
        folders = set(_ask_together(cache, tmp_path / f"start-{round_}", binary, binary))
        assert len(folders) == 1
        folder = folders.pop()
        assert [p.name for p in folder.iterdir()] == ["plug"]
        assert (folder / "plug").read_bytes() == binary.read_bytes()
        assert (folder / "plug").stat().st_mode & 0o777 == 0o755
        assert sorted(p.name for p in cache.iterdir()) == [".folders.lock", folder.name]  # no half-made folder

    # another binary (the Go sources changed, or another checkout shares the cache) gets a folder of its own:
    # the first one, which a build may be reading, is not written
    first = (folder / "plug").stat()
    binary.write_bytes(b"another build")
    second = imagesteps.binary_folder(cache, binary, "plug")
    assert second != folder and (second / "plug").read_bytes() == b"another build"
    assert (folder / "plug").stat().st_ctime_ns == first.st_ctime_ns


def _aged(path: Path, seconds: float) -> Path:
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


def test_folders_nobody_asked_for_in_a_day_are_pruned_and_one_just_handed_out_is_kept(tmp_path: Path) -> None:
    asked = _binary(tmp_path / "asked", b"\x7fELF asked for again" * 4096)
    for round_ in range(5):
        cache = tmp_path / f"cache-{round_}"
        folder = imagesteps.binary_folder(cache, asked, "plug")
        _aged(folder, 25 * 3600)  # a day old: due for pruning, until it is asked for again
        stale = cache / "plug-src-0123456789abcdef"
        stale.mkdir()
        (stale / "plug").write_bytes(b"an older build")
        _aged(stale, 25 * 3600)
        recent = cache / "plug-src-fedcba9876543210"
        recent.mkdir()
        _aged(recent, 23 * 3600)
        retired = []
        for name in ("kv-go-src", "counter-go-src"):  # plugbay's fixed folders before binary_folder
            (cache / name).mkdir()
            (cache / name / "plug").write_bytes(b"old")
            retired.append(_aged(cache / name, 25 * 3600))
        cut_short = _aged(Path(tempfile.mkdtemp(prefix=".plug-src-", dir=cache)), 20 * 60)  # its maker died
        in_progress = Path(tempfile.mkdtemp(prefix=".plug-src-", dir=cache))

        # one process asks for the day-old folder while another one makes a new binary's folder and prunes
        other = _binary(tmp_path / f"other-{round_}", f"another build {round_}".encode())
        got, made = _ask_together(cache, tmp_path / f"start-{round_}", asked, other)
        assert got == folder and (folder / "plug").read_bytes() == asked.read_bytes()  # kept, or made again
        assert (made / "plug").read_bytes() == other.read_bytes()
        assert not stale.exists() and not cut_short.exists() and not any(r.exists() for r in retired)
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            [".folders.lock", folder.name, made.name, recent.name, in_progress.name])

        # handed out, then a prune: the folder asked for a moment ago stays
        _aged(folder, 25 * 3600)
        assert imagesteps.binary_folder(cache, asked, "plug") == folder
        (third,) = _ask_together(cache, tmp_path / f"start-{round_}-again", _binary(tmp_path / "third", b"3"))
        assert (folder / "plug").read_bytes() == asked.read_bytes() and (third / "plug").read_bytes() == b"3"
