"""A reattached plugin's socket folder goes with the plugin, once the host that adopted it proves it gone.

The folder is made by the plugin's first host, which removes it as it ends its Client; a host killed
with SIGKILL cannot, and the host that reattached used to leave it to ``plugbay sweep --temp``. Now
the adopter removes the folder the proven plugin was given (its ``PLUGIN_UNIX_SOCKET_DIR``) as the
sweep would: plugbay's, its maker gone, nothing in it answering; never another folder, and never
while the first host still lives (it removes its own).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay import AsyncClient, Client, ClientConfig, PluginDiedError, ReattachConfig
from tests.cli_util import cli_env

ROOT = Path(__file__).resolve().parent.parent
KV = ROOT / "examples" / "kv"
sys.path.insert(0, str(KV))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

_HOST = f"""
import sys, time
sys.path.insert(0, {str(KV)!r})
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig

client = Client(ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}},
                             cmd=[sys.executable, {str(KV / "plugin.py")!r}]))
client.start()
client.dispense(PLUGIN_NAME).put("k", b"v")
print(client.reattach_config().to_json(), flush=True)
time.sleep(120)
"""


def _config(text: str) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                        reattach=ReattachConfig.from_json(text))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """The first host's temp dir, short enough for its socket paths."""
    with tempfile.TemporaryDirectory(prefix="tmpr-") as folder:
        yield Path(folder)


def _gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)  # reaped by init (or a subreaper) once its parent, the killed host, is gone


@pytest.mark.parametrize("how", ["kill", "died-then-close", "first-host-lives"])
def test_the_adopting_host_removes_the_gone_plugins_folder_and_only_that(short_dir: Path, how: str) -> None:
    host = subprocess.Popen([sys.executable, "-c", _HOST], stdout=subprocess.PIPE, text=True,
                            env=cli_env(TMPDIR=str(short_dir)), stdin=subprocess.DEVNULL, cwd=short_dir)
    plugin_pid = 0
    try:
        assert host.stdout is not None
        text = host.stdout.readline()
        assert text, "the host printed nothing"
        config = ReattachConfig.from_json(text)
        plugin_pid = config.runner["pid"]
        folder = Path(config.handshake.address).parent
        # a folder the sweep would remove too (a marked one whose maker is gone), but not the plugin's
        other = Path(subprocess.run(
            [sys.executable, "-c", "import sys; from plugbay.core.transport.tempdirs import make_tempdir;"
             " print(make_tempdir('plugbay-', dir=sys.argv[1]))", str(short_dir)],
            capture_output=True, text=True, timeout=60, env=cli_env(), check=True).stdout.strip())
        if how != "first-host-lives":
            host.kill()
            host.wait(30)
        assert folder.is_dir() and other.is_dir()

        if how == "died-then-close":
            async def adopt_then_lose() -> None:
                client = AsyncClient(_config(text))
                await client.start()
                kv = await client.dispense(PLUGIN_NAME)
                assert await kv.get("k") == b"v"
                os.kill(plugin_pid, signal.SIGKILL)
                _gone(plugin_pid)
                with pytest.raises(PluginDiedError):
                    await kv.get("k")
                await client.close()  # close() only disconnects: the plugin is gone already
            asyncio.run(adopt_then_lose())
        else:
            with Client(_config(text)) as client:
                assert client.dispense(PLUGIN_NAME).get("k") == b"v"
                client.kill()
        _gone(plugin_pid)

        if how == "first-host-lives":  # its own Client's folder: the living host removes it, not the adopter
            assert folder.is_dir()
        else:
            assert not folder.exists()
        assert other.is_dir()  # the sweep's to remove, not the adopter's
    finally:
        host.kill()
        host.wait(30)
        if host.stdout is not None:
            host.stdout.close()
        if plugin_pid:
            try:
                os.kill(plugin_pid, signal.SIGKILL)  # this test started it (through its host process)
            except ProcessLookupError:
                pass
