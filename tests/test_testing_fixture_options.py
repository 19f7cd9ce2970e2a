"""The pytest fixtures' options are checked as ClientConfig's and DockerRunner's are: a misspelled one is a
ConfigError naming the valid ones (it was Python's bare TypeError, or a ValueError for a runner= given as a
str), and nothing is started."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay.errors import ConfigError  # noqa: E402

KV = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]
PLUGINS = {PLUGIN_NAME: KVPlugin()}


def test_a_misspelled_client_option_of_plugin_process_is_a_config_error(plugin_process: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError) as err:
        plugin_process(KV, HANDSHAKE, PLUGINS, start_timout=5)
    said = str(err.value)
    assert said.startswith("plugin_process() has no option 'start_timout' (did you mean start_timeout?); its options"
                           " are ClientConfig's fields: versioned_plugins, auto_mtls,"), said
    for own in ("handshake", "plugins", "runner", "cmd", "reattach"):  # its arguments, or what it sets itself
        assert f" {own}," not in said, said


@pytest.mark.parametrize(("runner", "says"), [
    ({"transprt": "tcp"}, r"^plugin_container's runner= has no option 'transprt' \(did you mean transport\?\); its"
                          r" options are DockerRunner's keyword arguments: transport, user,"),
    # DockerRunner does take an image: as plugin_container's first argument, not among runner='s options
    ({"image": "other:latest"}, r"^plugin_container's runner= has no option 'image' \(the image is plugin_container's"
                                r" first argument\); its options are DockerRunner's keyword arguments: transport,"),
    ("tcp", r"runner= takes a dict of DockerRunner options, such as \{'transport': 'tcp'\}, got str"),
])
def test_a_wrong_runner_option_of_plugin_container_is_a_config_error(plugin_container: Callable[..., Any],
                                                                     runner: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        plugin_container("plugbay-kv:latest", HANDSHAKE, PLUGINS, runner=runner)


def test_a_misspelled_client_option_of_plugin_container_is_a_config_error(plugin_container: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"^plugin_container\(\) has no option 'kill_grase' \(did you mean kill_gr"):
        plugin_container("plugbay-kv:latest", HANDSHAKE, PLUGINS, kill_grase=1)


@pytest.mark.parametrize(("option", "says"), [
    ({"cmd": ["plugin"]}, r"has no option 'cmd' \(a container runs its image's own command; pass runner=\{'command'"),
    ({"reattach": None}, r"has no option 'reattach' \(plugin_container starts a fresh container\)"),
])
def test_plugin_container_does_not_offer_cmd_or_reattach(plugin_container: Callable[..., Any], option: dict[str, Any],
                                                         says: str) -> None:
    with pytest.raises(ConfigError, match=f"^plugin_container\\(\\) {says}") as err:
        plugin_container("plugbay-kv:latest", HANDSHAKE, PLUGINS, **option)
    offered = str(err.value).split("its options are ClientConfig's fields: ")[1].split(", ")
    assert "cmd" not in offered and "reattach" not in offered and "start_timeout" in offered


@pytest.mark.parametrize("option", [{"transport": "tcp"}, {"command": ["plugin"]}, {"read_only": False}])
def test_a_docker_runner_option_given_to_plugin_container_itself_is_said_to_go_in_runner(
        plugin_container: Callable[..., Any], option: dict[str, Any]) -> None:
    (name,) = option
    with pytest.raises(ConfigError, match=f"^plugin_container\\(\\) has no option '{name}' \\(a DockerRunner option:"
                                          f" pass runner=\\{{'{name}': \\.\\.\\.\\}}\\); its options") as err:
        plugin_container("plugbay-kv:latest", HANDSHAKE, PLUGINS, **option)
    offered = str(err.value).split("its options are ClientConfig's fields: ")[1].split(", ")
    assert name not in offered and "start_timeout" in offered and "env" in offered  # env=: ClientConfig's own


def test_the_typed_options_are_the_ones_the_fixtures_take_with_client_configs_types() -> None:
    """ClientOptions, the fixtures' **config for a type checker, lists exactly what they accept at run time:
    ClientConfig's fields but their arguments (handshake, plugins) and what each sets itself."""
    import dataclasses
    import typing

    from plugbay.core.host import config as config_module
    from plugbay.testing import ClientOptions, pytest_plugin

    fields = [f.name for f in dataclasses.fields(config_module.ClientConfig) if f.name not in ("handshake", "plugins")]
    for sets in (pytest_plugin._PROCESS_SETS, pytest_plugin._CONTAINER_SETS):
        assert list(ClientOptions.__annotations__) == [name for name in fields if name not in sets]
    assert ClientOptions.__required_keys__ == frozenset()  # each keeps ClientConfig's default
    config_hints = typing.get_type_hints(config_module.ClientConfig)
    # its annotations name types imported for type checkers only: read them where ClientConfig's are
    option_hints = {name: eval(ref.__forward_arg__, vars(config_module))
                    for name, ref in ClientOptions.__annotations__.items()}
    assert option_hints == {name: config_hints[name] for name in ClientOptions.__annotations__}
