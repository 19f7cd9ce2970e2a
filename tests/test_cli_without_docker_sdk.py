"""plugbay installed without the docker SDK (``pip install 'plugbay[cli]'`` alone): what needs Docker says
how to get it, and a sweep not asked for Docker by name skips it and still sweeps the temp folders.

The SDK is made missing in the child only: a sitecustomize on its PYTHONPATH puts a finder first on
sys.meta_path that refuses ``docker`` (the shared venv keeps its SDK)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_util import cli_env, plugbay

_NO_DOCKER = '''\
import sys


class _NoDocker:
    """`import docker` (and its submodules) fails as it does where the SDK is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "docker" or name.startswith("docker."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoDocker())
'''
ADVICE = "pip install 'plugbay[docker]'"


@pytest.fixture
def no_sdk(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "nodocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_DOCKER)
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    probe = subprocess.run([sys.executable, "-c", "import docker"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode == 1 and "No module named 'docker'" in probe.stderr  # the SDK is missing there
    return env


def _gone_makers_folder(root: Path) -> Path:
    """A plugbay temp folder whose maker has exited (a real process, run to its end): a sweep's to remove."""
    out = subprocess.run([sys.executable, "-c", "import sys; from plugbay.core.transport.tempdirs import "
                          "make_tempdir; print(make_tempdir(sys.argv[1], dir=sys.argv[2]))", "plugbay-t-",
                          str(root)], capture_output=True, text=True, timeout=60, env=cli_env(), check=True)
    return Path(out.stdout.strip())


def _one_line_advice(out: subprocess.CompletedProcess[str], code: int) -> None:
    assert out.returncode == code, out.stderr
    assert "unexpected" not in out.stderr and "ModuleNotFoundError" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and ADVICE in lines[0], out.stderr


def test_a_default_sweep_skips_docker_with_a_word_and_still_sweeps_the_temp_folders(
        no_sdk: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "temp"
    root.mkdir()
    left = _gone_makers_folder(root)
    listed = plugbay("sweep", "--dry-run", "--json", "--temp-dir", str(root), env=no_sdk)
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.startswith("error: docker skipped: ") and ADVICE in listed.stderr
    assert json.loads(listed.stdout)["temp"] == [str(left)] and left.exists()
    swept = plugbay("sweep", "--temp-dir", str(root), env=no_sdk)
    assert swept.returncode == 0 and swept.stdout.splitlines()[-1] == "removed 1", swept.stdout + swept.stderr
    assert not left.exists()


def test_what_needs_docker_says_to_install_the_sdk(no_sdk: dict[str, str]) -> None:
    # exit 3 as DockerRunner's own start without the SDK (EngineUnavailableError)
    _one_line_advice(plugbay("sweep", "--docker", "--dry-run", env=no_sdk), 3)
    _one_line_advice(plugbay("images", "build", "kv", env=no_sdk), 3)
    _one_line_advice(plugbay("diagnose", "docker:0123456789ab", env=no_sdk), 3)


def _raises_the_advice(env: dict[str, str], imports: str, statement: str) -> None:
    """``statement`` (after ``imports``), run where the SDK is missing, raises EngineUnavailableError with ADVICE."""
    code = (f"from plugbay.errors import EngineUnavailableError\n{imports}\n"
            f"try:\n    {statement}\nexcept EngineUnavailableError as exc:\n    print('raised:', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("raised: ") and ADVICE in out.stdout


def test_ensure_example_raises_plugbays_error_naming_the_extra(no_sdk: dict[str, str]) -> None:
    _raises_the_advice(no_sdk, "from plugbay.images import ensure_example", "ensure_example('kv', progress=print)")


def test_a_docker_runner_with_a_memory_limit_says_how_to_get_the_sdk(no_sdk: dict[str, str]) -> None:
    # the mem_limit check parses the size with the SDK's own parser: its import was a bare ModuleNotFoundError
    _raises_the_advice(no_sdk, "from plugbay.runners.docker import DockerRunner",
                       "DockerRunner('plugbay-kv:latest', mem_limit='512m')")
