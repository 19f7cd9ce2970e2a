"""pytest plugin (entry point ``plugbay``): plugins as fixtures that always clean up.

Fixtures:

``plugin_process(cmd, handshake, plugins, **config)``
    starts ``cmd`` as a local plugin process and returns the started Client;
    ``cmd`` is a list of strings or os.PathLike paths, as ClientConfig.cmd (one
    command-line string is ClientConfig's ConfigError).
``plugin_container(image, handshake, plugins, runner=dict(...), **config)``
    starts ``image`` through DockerRunner (``runner`` holds its options) and
    returns the started Client. Skips the test when no Docker engine answers.
``plugbay_docker``
    (session) a docker SDK client with the API version negotiated, or a skip.
``plugbay_image(name)``
    (session) builds an example image (kv, kv-go, counter) at most once per run
    via plugbay.images and returns its tag.

Every Client a fixture started is killed at teardown, whether the test passed,
failed or raised, so no process, container, socket or thread outlives it. Once
``plugin_process`` or ``plugin_container`` is used, SIGTERM (a cancelled CI job)
stops the run as Ctrl-C does, so that teardown still runs (see sigterm.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

# Imported lazily: pytest loads this plugin in every run of every project that
# installed plugbay, and should not pay for (or break on) grpc imports there.
if TYPE_CHECKING:
    from plugbay.core.host.client import Client, ClientConfig
    from plugbay.core.protocol.handshake import HandshakeConfig
    from plugbay.core.broker.plugin import PluginSet
    from plugbay.testing.fixturetypes import StartPluginContainer, StartPluginProcess


class _Started:
    """Clients started by one fixture, killed together at teardown."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    def start(self, config: ClientConfig) -> Client:
        from plugbay.core.host.client import Client

        client = Client(config)
        self.clients.append(client)  # before start(): a failed start still gets killed
        client.start()
        return client

    def close(self) -> None:
        """Kill every client, then raise the first failure: a Ctrl-C (any BaseException) in one kill() must
        not leave the others running. An interrupt goes before an ordinary error that came earlier, so the
        run still stops."""
        errors: list[BaseException] = []
        clients, self.clients = list(reversed(self.clients)), []
        for client in clients:
            try:
                client.kill()
            except BaseException as exc:  # noqa: BLE001 - kill the others anyway, then raise it
                errors.append(exc)
        if errors:
            raise next((e for e in errors if not isinstance(e, Exception)), errors[0])


def _client_options(owner: str, config: Mapping[str, Any], left_out: Mapping[str, str]) -> Mapping[str, Any]:
    """A fixture's ``**config``, refused with a ConfigError naming ClientConfig's fields when one is not
    among them (ClientConfig(**config) raised a bare TypeError); ``left_out``: the fields the fixture
    sets itself, each with what to say when given (check_option_names)."""
    import dataclasses

    from plugbay.core.host.config import ClientConfig
    from plugbay.core.protocol.optionnames import check_option_names

    check_option_names(owner, config, [f.name for f in dataclasses.fields(ClientConfig)], "ClientConfig's fields",
                       {"handshake": "", "plugins": "", **left_out})
    return config


def _runner_options(runner: object) -> dict[str, Any]:
    """plugin_container's ``runner=``, DockerRunner's keyword arguments: a ConfigError naming them when it is
    no mapping or holds another key (DockerRunner(**runner) raised a bare TypeError or ValueError)."""
    import inspect

    from plugbay.core.protocol.optionnames import check_option_names
    from plugbay.errors import ConfigError
    from plugbay.runners.docker import DockerRunner

    if runner is None:
        return {}
    if not isinstance(runner, Mapping):
        raise ConfigError(f"plugin_container's runner= takes a dict of DockerRunner options, such as"
                          f" {{'transport': 'tcp'}}, got {type(runner).__name__}")
    names = [n for n, p in inspect.signature(DockerRunner).parameters.items() if p.kind is p.KEYWORD_ONLY]
    check_option_names("plugin_container's runner=", runner, names, "DockerRunner's keyword arguments",
                       {"image": "the image is plugin_container's first argument"})
    return dict(runner)


def _runner_notes() -> dict[str, str]:
    """DockerRunner's own options (transport=, command=, ...) given to plugin_container at the top level, where
    its ClientConfig's go: each said to go in runner= (one ClientConfig also has, env= or name=, is that one's)."""
    import dataclasses
    import inspect

    from plugbay.core.host.config import ClientConfig
    from plugbay.runners.docker import DockerRunner

    fields = {f.name for f in dataclasses.fields(ClientConfig)}
    return {name: f"a DockerRunner option: pass runner={{{name!r}: ...}}"
            for name, p in inspect.signature(DockerRunner).parameters.items()
            if p.kind is p.KEYWORD_ONLY and name not in fields}


# what the fixtures set themselves, so not offered as their options
_PROCESS_SETS = {"cmd": "", "runner": "plugin_process runs cmd as a local process; plugin_container runs an image",
                 "reattach": "plugin_process starts a fresh plugin from cmd"}
_CONTAINER_SETS = {"cmd": "a container runs its image's own command; pass runner={'command': [...]}",
                   "runner": "", "reattach": "plugin_container starts a fresh container"}


def pytest_unconfigure(config: pytest.Config) -> None:
    from plugbay.testing.sigterm import restore_sigterm

    restore_sigterm()


@pytest.fixture
def plugin_process() -> Iterator[StartPluginProcess]:
    """Start a plugin command as a local process; returns the started Client, killed at teardown."""
    from plugbay.testing.sigterm import stop_on_sigterm

    stop_on_sigterm()
    started = _Started()

    def start(cmd: Sequence[str | os.PathLike[str]], handshake: HandshakeConfig, plugins: PluginSet | None = None,
              **config: Any) -> Client:
        from plugbay.core.host.client import ClientConfig

        # a str is a Sequence too, and list() would split it into characters: copy only real sequences and
        # hand anything else over as given, so ClientConfig's own check says what is wrong with it
        if isinstance(cmd, Sequence) and not isinstance(cmd, (str, bytes)):
            cmd = list(cmd)
        return started.start(ClientConfig(handshake=handshake, plugins=plugins, cmd=cmd,
                                          **_client_options("plugin_process()", config, _PROCESS_SETS)))

    try:
        yield start
    finally:
        started.close()


@pytest.fixture(scope="session")
def plugbay_docker() -> Iterator[Any]:
    """A docker SDK client (API version negotiated); skips when no Docker engine answers."""
    from docker.errors import DockerException

    from plugbay.errors import EngineUnavailableError
    from plugbay.runners.docker.engine import engine

    try:
        client = engine()
        client.ping()
    # Only "no engine answers" skips (requests' errors are OSErrors); any other
    # failure is a bug that must fail the run, not hide it as a skip.
    except (EngineUnavailableError, DockerException, OSError) as exc:
        pytest.skip(f"no Docker engine: {exc}")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def plugbay_image(plugbay_docker: Any) -> Callable[[str], str]:
    """Build an example plugin image (kv, kv-go, counter) once per run; returns its tag."""
    from plugbay import images

    built: dict[str, str] = {}

    def build(name: str) -> str:
        if name not in built:
            built[name] = images.ensure_example(name, client=plugbay_docker)
        return built[name]

    return build


@pytest.fixture
def plugin_container(plugbay_docker: Any) -> Iterator[StartPluginContainer]:
    """Start a plugin image through DockerRunner; returns the started Client, killed at teardown."""
    from plugbay.runners.docker import DockerRunner
    from plugbay.testing.sigterm import stop_on_sigterm

    stop_on_sigterm()
    started = _Started()

    def start(image: str, handshake: HandshakeConfig, plugins: PluginSet | None = None, *,
              runner: Mapping[str, Any] | None = None, **config: Any) -> Client:
        from plugbay.core.host.client import ClientConfig

        options = _client_options("plugin_container()", config, {**_runner_notes(), **_CONTAINER_SETS})
        return started.start(ClientConfig(handshake=handshake, plugins=plugins,
                                          runner=DockerRunner(image, **_runner_options(runner)), **options))

    try:
        yield start
    finally:
        started.close()
