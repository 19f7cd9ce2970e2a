"""A reattach to a unix-transport container needs the host folder its socket is in.

Real engine and the KV example image: the reattach JSON of a running plugin, with its runner's
``host_socket_dir`` taken out (or made no path), is refused at once with a ReattachError that names
the missing field when the host would dial it, not as a plugin that "put its socket in the wrong place".
(Attaching to look only, as ``plugbay diagnose docker:ID`` does, needs no folder.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.core.host.reattach import ReattachConfig
from plugbay.errors import ReattachError
from plugbay.runners.docker import DockerRunner

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

PLUGINS = {PLUGIN_NAME: KVPlugin(None)}  # type: ignore[arg-type]


@pytest.mark.parametrize("edit", ["drop", "null"])
def test_a_unix_reattach_without_host_socket_dir_says_it_is_missing(plugbay_image: Any, plugbay_docker: Any,
                                                                    edit: str) -> None:
    runner = DockerRunner(plugbay_image("kv"), writable_dirs=("/tmp", "/data"))
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner)) as first:
        first.dispense(PLUGIN_NAME).put("kept", b"yes")
        data = first.reattach_config().to_dict()
        if edit == "drop":
            del data["runner"]["host_socket_dir"]
        else:
            data["runner"]["host_socket_dir"] = None
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=ReattachConfig.from_dict(data)))
        with pytest.raises(ReattachError) as raised:
            second.start()
        second.kill()
        text = str(raised.value)
        assert "'host_socket_dir'" in text and "unix" in text, text
        assert "Client.reattach_config().to_json()" in text, text
        assert "transport='tcp'" not in text, text  # the plugin put its socket where it should
        # the refused reattach touched nothing: the plugin serves its first host still
        assert plugbay_docker.containers.get(first.runner.id).status == "running"
        assert first.dispense(PLUGIN_NAME).get("kept") == b"yes"

