"""PluginContainer: a plugbay plugin image as a testcontainers-python container.

    with PluginContainer("plugbay-kv:latest", HANDSHAKE, {"kv_grpc": KVPlugin(None)}) as plugin:
        kv = plugin.dispense("kv_grpc")
        kv.put("a", b"1")

The container gets the go-plugin environment (magic cookie, protocol
versions) and, by default, listens on TCP port 4000 published on 127.0.0.1
only (PLUGBAY_LISTEN) with AutoMTLS: a fresh client certificate goes in
PLUGIN_CLIENT_CERT, as a Client's does, since any local process can reach a
published port (``auto_mtls=False`` opts out, for a plugin without AutoMTLS).
``transport="unix"`` bind-mounts a socket folder instead and always runs the
container with no network (needed for go-plugin 1.0.1 Go plugins, which
cannot listen on all interfaces). start() returns once the plugin printed its
handshake line; get_client() connects a plugbay Client to it through the
Docker runner's reattach path (with the certificate), so address mapping,
deadlines, TLS and typed errors are the same as with DockerRunner; ``client_options``
are that Client's other ClientConfig fields (sinks, logger, grpc_options, ...). As with
DockerRunner, the image must be on the engine: nothing is ever pulled.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import sys
import uuid
from collections.abc import Mapping
from typing import Any, Self, overload

from testcontainers.core.container import DockerContainer
from testcontainers.core.docker_client import DockerClient, get_docker_host
from testcontainers.core.labels import create_labels

from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.client import Client, ClientConfig
from plugbay.core.host.config import accepted_versions
from plugbay.core.host.launch import refuse_announced
from plugbay.errors import ClientStateError, ConfigError, RunnerError, TLSRequiredError, printable
from plugbay.core.protocol.handshake import ENV_CLIENT_CERT, ENV_PROTOCOL_VERSIONS, HandshakeConfig, HandshakeInfo
from plugbay.core.protocol.tls import CertKey, generate_cert
from plugbay.core.broker.plugin import PluginSet, VersionedPlugins
from plugbay.core.host.reattach import ReattachConfig
from plugbay.core.host.typedstub import StubT, check_stub_type, checked_stub
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.runners.docker.adopt import reattach_labels
from plugbay.runners.docker.checks import find_image, missing_image
from plugbay.runners.docker.connect import release_frames
from plugbay.runners.docker.createargs import checked_labels
from plugbay.runners.docker.refusal import engine_refused
from plugbay.runners.docker.madehere import engine_identity, forget_made, record_made
from plugbay.runners.docker.hardening import log_config
from plugbay.runners.docker.engine import (CONTAINER_SOCKET_DIR, SOCKET_DIR, SOCKET_OWNED, SOCKET_TOKEN, engine_call,
                                            engine_failures, mark_socket_dir, prepare_socket_dir, transport_settings)
from plugbay.runners.docker.unanswered import create_or_clean, create_token, wait_late_creates
from plugbay.runners.reattachkey import SECRET, new_secret
from plugbay.runners.session import managed_labels
from plugbay.testing import livecontainers
from plugbay.testing.announced import check_announced
from plugbay.testing.containerargs import check_args, checked_client_options
from plugbay.testing.handshake_log import read_handshake
from plugbay.testing.pluginlogs import PluginLogs
from plugbay.testing.reaper import reaper_failure

_log = logging.getLogger("plugbay.testing")

# docker-py's arguments that choose a container's network: a unix-transport plugin gets none
_NETWORK_ARGS = ("network", "network_mode", "networking_config")
# create arguments testcontainers' start() passes itself (a second one was a bare TypeError): what to use instead
_OWN_ARGS = {"environment": "env={...} or with_env(key, value)", "tmpfs": "with_tmpfs_mount(path, size)",
             "command": "command= or with_command()", "ports": "container_port=",
             "name": "name= or with_name()", "volumes": "volumes= or with_volume_mapping()"}
_CONTAINER_PARAMS = frozenset(inspect.signature(DockerContainer.__init__).parameters)  # command=, name=, ...
# what a call that met the container's death advises (a Supervisor's own advice is its restart; this one's: the
# container's)
_RESTART = ("restart the PluginContainer (stop(), then start()) or make a new one, then dispense() or get_client()"
            " again")


def _caller_labels(kwargs: Mapping[str, Any]) -> dict[str, str]:
    """The caller's ``labels`` create argument, checked as DockerRunner checks its own (docker-py also takes
    a list of names), and no create argument testcontainers passes itself (``kwargs``: those left to create())."""
    for name, instead in _OWN_ARGS.items():
        if name in kwargs:
            raise ConfigError(f"PluginContainer does not take docker-py's {name}= (testcontainers sets the"
                              f" container's {name} itself); use {instead}")
    return checked_labels(kwargs.get("labels") or {}, "PluginContainer(labels=...)")


class _Engine(DockerClient):
    """testcontainers' engine client with a create() that never pulls and keeps a network_mode.

    testcontainers' own create() pulls an image the engine lacks (plugbay never uses a registry,
    and the failure surfaced as a docker SDK error, not ImageNotFoundError), and when it runs inside
    a container it adds that container's network even when network_mode was given (docker-py's
    network= overrides network_mode: a unix-transport plugin landed on a network).
    """

    def __init__(self, made: DockerClient) -> None:
        # the engine client testcontainers already made, not a second one (a second connection
        # and, with version="auto", a second version request)
        self.__dict__.update(vars(made))

    def create(self, image: str, command: Any = None, environment: Any = None, ports: Any = None,
               labels: dict[str, str] | None = None, detach: bool = False, **kwargs: Any) -> Any:
        from docker.errors import APIError, ImageNotFound

        find_image(self.client, image)  # DockerRunner's check: ImageNotFoundError saying how to build it
        if not any(name in kwargs for name in _NETWORK_ARGS) and not get_docker_host():
            # testcontainers' join of the network of the container the tests run in (tcp only:
            # the unix transport sets network_mode)
            host_network = self.find_host_network()
            if host_network:
                kwargs["network"] = host_network
        sent = create_labels(image, labels)
        made_by = engine_identity(self.client)  # before the create: the record names the engine that made it
        try:
            # no answer (Ctrl-C, a timeout) leaves testcontainers no container for stop(): found by name
            made = create_or_clean(lambda: engine_call(lambda: self.client.containers.create(
                image, command=command, environment=environment, ports=ports, labels=sent, detach=detach,
                **kwargs), "create the container"), self.client.api, kwargs.get("name"), sent)
            record_made(made.id, made_by)  # the sweep's proof that plugbay made it (madehere.py), as DockerRunner's
            return made
        except ImageNotFound:  # removed since find_image saw it; docker-py's create does not pull
            raise missing_image(image) from None
        except APIError as exc:
            raise _refused(image, exc) from exc

    def start(self, container: Any) -> None:
        from docker.errors import APIError

        try:
            engine_call(container.start, "start the container")
        except APIError as exc:
            raise _refused((container.attrs.get("Config") or {}).get("Image") or container.short_id, exc) from exc


def _refused(image: str, exc: Any) -> RunnerError:
    """An engine's refusal to create or start the container, as DockerRunner words it."""
    return engine_refused(image, exc, "the entrypoint=/command= given to PluginContainer (else the image's"
                          " ENTRYPOINT/CMD)", "PluginContainer's arguments (volumes, user, ports, docker-py"
                          " kwargs)")


class PluginContainer(DockerContainer):
    """A plugin image under testcontainers' lifecycle (start/stop/with)."""

    def __init__(self, image: str, handshake: HandshakeConfig, plugins: PluginSet | None = None, *,
                 versioned_plugins: VersionedPlugins | None = None, transport: str = "tcp",
                 container_port: int = 4000, start_timeout: float = 60.0,
                 call_timeout: float | None = 30.0, auto_mtls: bool | None = None,
                 client_options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if not isinstance(handshake, HandshakeConfig):
            raise ConfigError(f"PluginContainer's handshake must be a HandshakeConfig, got {type(handshake).__name__};"
                              " pass the plugin's HandshakeConfig(protocol_version, cookie_key, cookie_value)")
        if transport not in ("tcp", "unix"):
            raise ConfigError(f"PluginContainer's transport must be 'tcp' or 'unix', got {transport!r}")
        if auto_mtls is not None and not isinstance(auto_mtls, bool):
            raise ConfigError(f"PluginContainer's auto_mtls must be True, False or None, got {auto_mtls!r}")
        check_args(image, plugins, versioned_plugins, container_port, start_timeout, call_timeout)
        self.client_options = checked_client_options(client_options, handshake)
        kwargs.setdefault("docker_client_kw", {"version": "auto"})
        # what DockerContainer leaves for create(), checked before it makes its engine client
        _caller_labels({k: v for k, v in kwargs.items() if k not in _CONTAINER_PARAMS})
        super().__init__(image, **kwargs)
        self.handshake_config = handshake
        self.plugins = plugins
        self.versioned_plugins = versioned_plugins
        self.transport = transport
        self.container_port = container_port
        self.start_timeout = float(start_timeout)  # checked: a Fraction or numpy scalar as the waits take it
        self.call_timeout = None if call_timeout is None else float(call_timeout)
        # as ClientConfig.auto_mtls: None is on for tcp (a published port any local process can
        # reach, as DockerRunner's tcp requires TLS) and off for unix (a private folder)
        self.auto_mtls = auto_mtls
        self.handshake: HandshakeInfo | None = None
        self._cert: CertKey | None = None
        self._engine: _Engine | None = None
        self._socket_dir: str | None = None
        self._reattach_secret = ""
        self._client: Client | None = None
        self._logs: PluginLogs | None = None  # the plugin's stderr into logging: its Client, a reattach, reads none
        # the caller's create arguments, kept apart from the ones _configure() adds to them for one
        # start: a restart builds on them again, not on the previous start's labels
        self._given_kwargs: dict[str, Any] = {}
        self._built_kwargs: dict[str, Any] | None = None
        self._made_name: str | None = None  # the container name _configure() chose (the caller gave none)
        self._started = False  # start() called and no stop() since: a second start() would orphan the container
        # the versions its Client will take: the handshake's own only with plugins (ClientConfig.versions())
        versions = sorted(accepted_versions(handshake, plugins, versioned_plugins))
        self.with_env(handshake.magic_cookie_key, handshake.magic_cookie_value)
        self.with_env(ENV_PROTOCOL_VERSIONS, ",".join(str(v) for v in versions))

    def get_docker_client(self) -> DockerClient:
        if self._engine is None:
            self._engine = _Engine(super().get_docker_client())
        return self._engine

    def _configure(self) -> None:
        if self._kwargs is not self._built_kwargs:  # the constructor's, or a with_kwargs() since
            self._given_kwargs = dict(self._kwargs)
        caller = self._given_kwargs
        if self.transport == "unix":
            given = [name for name in _NETWORK_ARGS if caller.get(name) not in (None, "none")]
            if given or self._network is not None:
                raise ConfigError(f"PluginContainer(transport='unix') runs the plugin with no network, but"
                                  f" {', '.join(given) or 'with_network()'} asks for one; use transport='tcp'"
                                  " for a plugin that needs a network")
        # fresh per start, as a Client's; a stale one from an earlier start names a key no Client holds
        self._cert = None
        self.env.pop(ENV_CLIENT_CERT, None)
        if self.auto_mtls if self.auto_mtls is not None else self.transport == "tcp":
            self._cert = generate_cert()
            self.with_env(ENV_CLIENT_CERT, self._cert.cert_pem.decode())
        # plugbay's labels over the caller's (which may not name any of plugbay's)
        self._reattach_secret = new_secret()  # as DockerRunner's: reattach_config() holds it, a label its digest
        labels = {**_caller_labels(caller), **managed_labels(), **create_token(), "plugbay.plugin": self.image,
                  **reattach_labels(self._reattach_secret, self.transport, self.container_port)}
        if self._name is None or self._name == self._made_name:  # a name of its own, per start: see create()
            self._name = self._made_name = f"plugbay-tc-{uuid.uuid4().hex[:12]}"
        extra: dict[str, Any] = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
                                 "log_config": log_config()}
        gid: int | None = None
        if self.transport == "unix":
            self._socket_dir = make_tempdir("plugbay-tc-")
            gid = prepare_socket_dir(self._socket_dir)
            self.with_volume_mapping(self._socket_dir, CONTAINER_SOCKET_DIR, "rw")
            # what a reattach checks before it trusts the folder (as DockerRunner labels it);
            # not "owned": stop() removes the folder, not the Client
            labels.update({SOCKET_DIR: self._socket_dir, SOCKET_TOKEN: mark_socket_dir(self._socket_dir),
                           SOCKET_OWNED: "false"})
        # the same environment and engine arguments as DockerRunner's
        env, args = transport_settings(self.transport, self.container_port, gid)
        for key, value in env.items():
            self.with_env(key, value)
        # testcontainers publishes ports itself (docker-py accepts an (ip, port) tuple;
        # testcontainers' annotation is narrower)
        self.ports.update(args.pop("ports", {}))
        built = {**extra, **args, **caller, "labels": labels}
        if self.transport == "unix":  # a network_mode=None of the caller's (checked above) is not the default bridge
            built["network_mode"] = "none"
        self._kwargs = self._built_kwargs = built

    def start(self) -> Self:
        if self._started:  # before the try: its clean-up would remove the running container
            raise ClientStateError("PluginContainer is already started; call stop() first (or use a new"
                                   " PluginContainer for a second plugin)")
        self._started = True
        livecontainers.started(self)  # stopped at interpreter exit unless stop() comes first
        try:
            try:
                super().start()
            except Exception as exc:
                failure = reaper_failure(self.get_docker_client(), self.image, exc)
                if failure is None:
                    raise
                raise failure from exc
            container = self.get_wrapped_container()
            options = self.client_options
            name = printable(str(options.get("name") or self.image))  # as its Client names its logger
            self._logs = PluginLogs(container.client.api, container.id, name, options.get("logger"),
                                    options.get("raw_log_sink"))
            handshake = read_handshake(container, self.image, self.start_timeout)
            if self._cert is not None and handshake.server_cert is None and self.transport == "tcp":
                # the plugin serves plaintext on a port any local process can reach: refused, as
                # DockerRunner's tcp refuses it
                raise TLSRequiredError(self.image, "PluginContainer's tcp transport publishes the plugin on a"
                                       " 127.0.0.1 port any local process can reach; for a plugin without"
                                       " AutoMTLS pass PluginContainer(auto_mtls=False) to accept plaintext")
            # a version the host does not take, refused now, as the first get_client() would (the container went on)
            versions = accepted_versions(self.handshake_config, self.plugins, self.versioned_plugins)
            refuse_announced(handshake, dict.fromkeys(versions), False, self.image)
            self.handshake = handshake
            check_announced(self.reattach_config())  # refused now, as the first get_client() would
        except BaseException:
            self.stop()
            raise
        return self

    def reattach_config(self) -> ReattachConfig:
        """How a plugbay Client reaches this container (the Docker runner's reattach data)."""
        self._need_started("reattach_config")
        assert self.handshake is not None
        runner: dict[str, Any] = {"kind": "DockerRunner", "id": self.get_container_id(), "image": self.image,
                                  "transport": self.transport, "container_port": self.container_port,
                                  "host_socket_dir": self._socket_dir, "owns_socket_dir": False,
                                  SECRET: self._reattach_secret}
        if self.transport == "tcp":
            runner["host_port"] = int(self.get_docker_client().port(self.get_container_id(), self.container_port))
        return ReattachConfig(handshake=self.handshake, runner=runner, client_cert=self._cert, name=self.image)

    def get_client(self) -> Client:
        """The connected plugbay Client of this plugin (one per container; stop() kills it)."""
        self._need_started("get_client")
        if self._client is None:
            client = Client(ClientConfig(handshake=self.handshake_config, plugins=self.plugins,
                                         versioned_plugins=self.versioned_plugins, reattach=self.reattach_config(),
                                         start_timeout=self.start_timeout, call_timeout=self.call_timeout,
                                         **self.client_options))
            client.start()
            if isinstance(client.channel, ManagedChannel):
                # a Client's own advice once its plugin died ("start a new Client") cannot start this container
                client.channel.died_advice = lambda sent: _RESTART
            self._client = client
        return self._client

    @overload
    def dispense(self, name: str, stub_type: None = None) -> Any: ...
    @overload
    def dispense(self, name: str, stub_type: type[StubT]) -> StubT: ...

    def dispense(self, name: str, stub_type: type[Any] | None = None) -> Any:
        """The stub of plugin ``name``, through get_client(); given ``stub_type``, typed as one (Client.dispense())."""
        check_stub_type(stub_type, name, type(self).__name__, "grpc_client")
        self._need_started("dispense")
        return checked_stub(self.get_client().dispense(name), stub_type, name, type(self).__name__, "grpc_client")

    def _need_started(self, what: str) -> None:
        if self.handshake is None:
            raise ClientStateError(f"PluginContainer.{what}() needs the plugin started: call start() first, or"
                                   " use it as `with PluginContainer(...) as plugin:`")

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        from docker.errors import NotFound

        outer = sys.exc_info()[1]  # start()'s failure, when it is start() that stops: left as it is
        # the removed container's handshake and key: get_client() after stop() is "call start() first",
        # not a reattach to a container that no longer exists
        self.handshake, self._cert, self._started = None, None, False
        try:
            client, self._client = self._client, None
            try:
                if client is not None:
                    client.kill()  # Shutdown, then the runner removes the container
            finally:  # a kill that failed must not leave the container running
                made = self._container.id if self._container is not None else None
                try:
                    super().stop(force=force, delete_volume=delete_volume)
                    gone = True
                except NotFound:
                    self.get_docker_client().client.close()
                    gone = True
                except engine_failures() as exc:  # warned of: a start()'s own failure is the one to report
                    release_frames(exc, outer)  # the failed request's socket, closed now (not by the collector)
                    self.get_docker_client().client.close()
                    ref = self._container.short_id if self._container is not None else self._name
                    # its text: a record that kept the error would keep docker-py's failed connection open
                    _log.warning("container %s could not be removed: %s; remove it with `docker rm -f %s` or"
                                 " plugbay.runners.docker.sweep() once the engine answers", ref, str(exc), ref)
                    gone = False  # its record stays: the sweep's proof while it may still exist
                if gone and made:
                    forget_made(made)
        finally:
            livecontainers.stopped(self)
            try:
                # a create cut short (Ctrl-C, a dropped connection) the engine may make late is watched until
                # its answer was due (unanswered.py): as DockerRunner's kill(), stop() returns once such a
                # container is gone (the interpreter's exit waits for the watch anyway)
                wait_late_creates(self._name)
            finally:
                logs, self._logs = self._logs, None
                try:
                    if logs is not None:  # its log request ended with the container; an engine gone: closed now
                        logs.close()
                finally:
                    self._unmount()

    def _unmount(self) -> None:
        """Forget this start's socket folder: its volume mapping (the next start maps its own folder at
        the same place, which the engine refuses twice) and the folder itself."""
        if self._socket_dir is not None:
            self.volumes.pop(self._socket_dir, None)
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None


__all__ = ["PluginContainer"]
