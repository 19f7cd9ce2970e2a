"""The folder a compiled plugin's image is built from (imagesteps.binary_folder), under processes at once.

pytest-xdist workers each ask for the kv-go example image in their session: each one's recipe copied
the Go binary over one fixed folder, while another worker hashed that folder or copied it into its
build context, and read the binary cut short.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
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


def test_two_processes_making_one_binarys_folder_at_once_share_one_whole_folder(tmp_path: Path) -> None:
    binary = tmp_path / "plugin-binary"
    binary.write_bytes(bytes(range(256)) * 16384)  # 4 MiB: its copy takes a while
    binary.chmod(0o755)
    cache = tmp_path / "cache"
    code = """
        import sys, time
        from pathlib import Path
        from plugbay.imagesteps import binary_folder
        start = Path(sys.argv[3])
        while not start.exists():  # both begin together
            time.sleep(0.001)
        print(binary_folder(Path(sys.argv[1]), Path(sys.argv[2]), "plug"))
        """
    start = tmp_path / "start"
    procs = [_python(code, str(cache), str(binary), str(start)) for _ in range(2)]
    start.touch()
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    folders = {Path(out.strip()) for out, _ in results}
    assert len(folders) == 1
    folder = folders.pop()
    assert [p.name for p in folder.iterdir()] == ["plug"]
    assert (folder / "plug").read_bytes() == binary.read_bytes()
    assert (folder / "plug").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # no half-made folder left

    # another binary (the Go sources changed, or another checkout shares the cache) gets a folder of its own:
    # the first one, which a build may be reading, is not written
    first = (folder / "plug").stat()
    binary.write_bytes(b"another build")
    second = imagesteps.binary_folder(cache, binary, "plug")
    assert second != folder and (second / "plug").read_bytes() == b"another build"
    assert (folder / "plug").stat().st_ctime_ns == first.st_ctime_ns
