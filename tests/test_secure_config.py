"""SecureConfig runs exactly the bytes it checked, and can check a script run by an interpreter."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from plugbay import ChecksumMismatchError, Client, ClientConfig, ConfigError, MalformedHandshakeError, SecureConfig
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

PY = sys.executable
TRAP = str(REPO / "tests" / "plugins" / "trap_kv.py")
GOOD = "#!/bin/sh\necho checked\nsleep 30\n"
EVIL = "#!/bin/sh\necho swapped\nsleep 30\n"


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class SwappingRunner(ProcessRunner):
    """A ProcessRunner whose file is swapped between the check and the start (the attack's window)."""

    def __init__(self, cmd: list[str], swap: Path, how: str) -> None:
        super().__init__(cmd)
        self.swap, self.how = swap, how

    def start(self, spec: LaunchSpec) -> None:
        if self.how == "rename":
            fresh = self.swap.with_suffix(".new")
            fresh.write_text(EVIL)
            fresh.chmod(0o755)
            os.replace(fresh, self.swap)
        else:  # rewrite the same file in place
            with open(self.swap, "r+") as f:
                f.write(EVIL)
        super().start(spec)


@pytest.mark.parametrize("how", ["rename", "in-place"])
def test_the_checked_bytes_are_what_runs(tmp_path: Path, how: str) -> None:
    script = tmp_path / "plugin.sh"
    script.write_text(GOOD)
    script.chmod(0o755)
    runner = SwappingRunner([str(script)], script, how)
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={}, runner=runner, start_timeout=30,
                                 secure_config=SecureConfig(_sha(GOOD.encode()))))
    with pytest.raises(MalformedHandshakeError) as info:  # "checked" is no handshake line, but it is what ran
        client.start()
    client.kill()
    assert script.read_text() == EVIL  # the swap happened
    assert "'checked'" in str(info.value), str(info.value)


def test_a_script_run_by_an_interpreter_is_checked(tmp_path: Path, in_tmp: Path) -> None:
    script = tmp_path / "plugin.sh"
    script.write_text(f"exec {PY} {TRAP}\n")
    sh = "/bin/sh"
    both = [SecureConfig.of_file(sh), SecureConfig.of_file(str(script), check_path=str(script))]
    cfg = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[sh, str(script)],
                       secure_config=both, start_timeout=30)
    with Client(cfg) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("a", b"1")
        assert kv.get("a") == b"1"
    wrong = SecureConfig(_sha(b"other"), path=str(script))
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={}, cmd=[sh, str(script)], secure_config=wrong))
    with pytest.raises(ChecksumMismatchError, match=rf"checksums did not match for plugin file '{script}'"):
        client.start()
    client.kill()
    elsewhere = SecureConfig(_sha(b"x"), path=str(tmp_path / "other.sh"))
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={}, cmd=[sh, str(script)], secure_config=elsewhere))
    with pytest.raises(ConfigError, match=r"names a file that is not in the plugin command.*give path= as it"):
        client.start()
    client.kill()


def test_secure_config_takes_bytes_like_and_path_forms(tmp_path: Path) -> None:
    """Taken before these checks, kept as bytes and str: a bytearray checksum, a bytes or Path file for
    of_file, a Path as the checked file's name. An int stays refused (open() would take it as an fd)."""
    plugin = tmp_path / "p"
    plugin.write_bytes(b"#!/bin/sh\n")
    digest = hashlib.sha256(b"#!/bin/sh\n").digest()
    config = SecureConfig(bytearray(digest), "sha256", Path("./p"))  # type: ignore[arg-type]
    assert config.checksum == digest and type(config.checksum) is bytes and config.path == "p"
    assert SecureConfig(digest, path=os.fsencode(plugin)).path == str(plugin)  # type: ignore[arg-type]
    assert SecureConfig.of_file(os.fsencode(plugin)).checksum == digest
    assert SecureConfig.of_file(plugin, check_path=plugin).path == str(plugin)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="SecureConfig.of_file takes the path"):
        SecureConfig.of_file(5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="SecureConfig.path must be None"):
        SecureConfig(digest, path=5)  # type: ignore[arg-type]
