"""plugbay.testing.PluginContainer's wrong arguments and wrong call order are typed plugbay errors.

No container is started: these fail before Docker is asked anything (the client is made with a fixed
API version, which docker-py does not negotiate with the engine).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import ClientStateError, ConfigError  # noqa: E402

pytest.importorskip("testcontainers")
from plugbay.testing import PluginContainer  # noqa: E402

PLUGINS = {PLUGIN_NAME: KVPlugin(None)}  # type: ignore[arg-type]
NO_ENGINE = {"docker_client_kw": {"version": "1.41"}}


@pytest.mark.parametrize("kw, says", [
    ({"transport": "udp"}, "PluginContainer's transport must be 'tcp' or 'unix', got 'udp'"),
    ({"handshake": None}, "PluginContainer's handshake must be a HandshakeConfig, got NoneType"),
    # the tcp way to brokered callbacks is not reachable through a reattach: said, with the way that is
    ({"client_options": {"multiplex_broker": True}}, r"reattach.*transport='unix'"),
    ({"client_options": {"env": {"A": "1"}}}, "client_options takes the ClientConfig fields .*not 'env'"),
    ({"client_options": {"call_timeout": 3}}, r"pass PluginContainer\(call_timeout=...\)"),
    ({"client_options": {"kill_grace": "x"}}, "ClientConfig.kill_grace must be a number"),
])
def test_a_wrong_argument_is_a_config_error(kw: dict[str, Any], says: str) -> None:
    args: dict[str, Any] = {"handshake": HANDSHAKE, **kw}
    with pytest.raises(ConfigError, match=says):  # a bare ValueError / AttributeError before
        PluginContainer("plugbay-kv:latest", plugins=PLUGINS, **args, **NO_ENGINE)


@pytest.mark.parametrize("labels", [{"team": "a", "plugbay.managed": "false"}, ["plugbay.session"]])
def test_a_label_named_like_plugbays_is_a_config_error(labels: Any) -> None:
    # the caller's labels replaced plugbay's: reattach and sweep no longer knew the container
    says = r"PluginContainer\(labels=\.\.\.\) has label keys \['plugbay\.\w+'\]: keys starting with 'plugbay\.' are plugbay's own"
    with pytest.raises(ConfigError, match=says):
        PluginContainer("plugbay-kv:latest", HANDSHAKE, PLUGINS, labels=labels, **NO_ENGINE)
    container = PluginContainer("plugbay-kv:latest", HANDSHAKE, PLUGINS, **NO_ENGINE)
    container.with_kwargs(labels=labels)
    with pytest.raises(ConfigError, match=says):  # refused before the engine is asked anything
        container.start()


@pytest.mark.parametrize(("name", "instead"), [("environment", "env={...} or with_env(key, value)"),
                                               ("tmpfs", "with_tmpfs_mount(path, size)")])
def test_a_create_argument_testcontainers_sets_itself_is_a_config_error(name: str, instead: str) -> None:
    # docker-py's environment= (or tmpfs=) went on to testcontainers' create call, which passes its own: a bare
    # TypeError "got multiple values for keyword argument" at start()
    says = rf"PluginContainer does not take docker-py's {name}= \(testcontainers sets the container's {name} itself\);"
    with pytest.raises(ConfigError, match=says + " use " + re.escape(instead)):
        PluginContainer("plugbay-kv:latest", HANDSHAKE, PLUGINS, **{name: {"/x": "y"}}, **NO_ENGINE)
    container = PluginContainer("plugbay-kv:latest", HANDSHAKE, PLUGINS, **NO_ENGINE)
    container.with_kwargs(**{name: {"/x": "y"}})
    with pytest.raises(ConfigError, match=says):  # refused before the engine is asked anything
        container.start()


@pytest.mark.parametrize("call", ["get_client", "dispense", "reattach_config"])
def test_connecting_before_start_is_a_client_state_error(call: str) -> None:
    container = PluginContainer("plugbay-kv:latest", HANDSHAKE, PLUGINS, **NO_ENGINE)
    args = (PLUGIN_NAME,) if call == "dispense" else ()
    with pytest.raises(ClientStateError, match=rf"PluginContainer.{call}\(\) needs the plugin started: call start"):
        getattr(container, call)(*args)  # a bare RuntimeError before


@pytest.mark.parametrize("missing", ["testcontainers", "docker"])
def test_without_the_testing_extra_the_container_says_how_to_get_it(missing: str) -> None:
    import subprocess

    # the pytest plugin loads plugbay.testing in every run; the container needs the testing extra,
    # and without it `from plugbay.testing import PluginContainer` raised a bare ModuleNotFoundError
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            "try:\n"
            "    from plugbay.testing import PluginContainer\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ConfigError plugbay.testing.PluginContainer needs testcontainers and the docker")
    assert out.stdout.rstrip().endswith("pip install 'plugbay[testing]'")
