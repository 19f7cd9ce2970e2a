"""Reaching a running plugin from the command line: a reattach config or a network target.

``TARGET_OR_REATTACH`` is one of

* ``@FILE``: a reattach config file (what ``plugbay run --reattach-out`` or
  ``Client.reattach_config().to_json()`` wrote);
* inline reattach JSON (``{"handshake": ...}``);
* a network-mode target (``static:///``, ``dns:///``, ``dns+srv:///``,
  ``kubernetes:///``, ``unix:///``), reached through plugbay.network's
  endpoint pool: plaintext with ``--insecure``, mTLS with ``--ca/--cert/--key``.

A reattach config is reached the way a reattaching Client reaches it (the
runner's address mapping, the AutoMTLS certificates, the OpenSSL relay for Go
certificates), but without Client.start(): a health probe must not stop a
plugin that is slow or unhealthy, and start() tears a plugin down on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.cli import output
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.errors import ConfigError, EngineUnavailableError, RunnerError, TargetUnreachableError, clip, printable
from plugbay.errors import UnprovenAddressError

if TYPE_CHECKING:
    from plugbay.network.tls import NetworkTLS

REATTACH_FILE_MAX = 1 << 20  # a reattach config is a few KiB; run.py reads no more of an existing one either
_RUNNER_MODULES = {"ProcessRunner": "plugbay.runners.process", "DockerRunner": "plugbay.runners.docker",
                   "KubernetesRunner": "plugbay.runners.kubernetes"}


@dataclass
class Tls:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False
    allow_loopback: bool = False  # discovery (dns:///, kubernetes:///) may answer loopback addresses
    server_name: str | None = None  # the name the plugin's certificate carries, when not the address dialed


@dataclass
class Reached:
    """A channel to the plugin and what is known about it without asking it."""

    channel: grpc.Channel
    target: str
    facts: dict[str, Any] = field(default_factory=dict)
    network_tls: NetworkTLS | None = None  # a network target's NetworkTLS (its refusals name the --cert's dates)


def load_reattach(text: str) -> Any:
    """A ReattachConfig from ``@FILE`` or inline JSON; None when ``text`` is neither."""
    from plugbay.core.host.reattach import ReattachConfig

    if text.startswith("@"):
        text = _read_reattach_file(Path(text[1:]))
    elif not text.lstrip().startswith("{"):
        return None
    return ReattachConfig.from_json(text)


def _read_reattach_file(path: Path) -> str:
    """At most REATTACH_FILE_MAX bytes: @/dev/zero, or any endless pipe or huge file, would fill the memory
    (a pipe is read as well as a file: ``@<(ssh host cat plugin.json)``)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(REATTACH_FILE_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read reattach file {path}: {exc.strerror}; pass @FILE of an existing"
                          " file (plugbay run --reattach-out FILE writes one)") from None
    if len(raw) > REATTACH_FILE_MAX:
        raise ConfigError(f"reattach file {path} is larger than {REATTACH_FILE_MAX >> 20} MiB, which no reattach"
                          " config is; pass @FILE of what plugbay run --reattach-out (or"
                          " Client.reattach_config().to_json()) wrote")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"reattach file {path} is not UTF-8 text, as every reattach config is; pass @FILE of"
                          " what plugbay run --reattach-out (or Client.reattach_config().to_json()) wrote") from None


def attach_runner(data: dict[str, Any]) -> Any:
    """The AttachedRunner of reattach data; a gone plugin is unreachable, a gone engine too."""
    import importlib

    from plugbay.runners.base import reattach_runner

    kind = str(data.get("kind", ""))
    module = _RUNNER_MODULES.get(kind)
    if module is not None:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"the {data.get('kind')} reattach needs {exc.name}; install plugbay[docker]"
                              " or plugbay[kubernetes]") from None
    try:
        if kind == "DockerRunner":  # look only: the container stays its starting host's
            return importlib.import_module(module or "").DockerRunner.attach(data, take_ownership=False)
        if kind == "KubernetesRunner":  # info, call and health take no --kubeconfig: the host's own is used
            with output.kubernetes_flags(None):
                return reattach_runner(data)
        return reattach_runner(data)
    except EngineUnavailableError:
        raise
    except RunnerError as exc:
        raise TargetUnreachableError(str(exc)) from None


def _network_target(target: str, tls: Tls, options: Sequence[tuple[str, Any]] = ()) -> Reached:
    """A channel to one endpoint of the target, found by network mode's own parsing and discovery.

    A probe talks to one replica as it is (the first ready one), not through the endpoint pool,
    whose health checking would hide exactly the unhealthy replica being asked about.
    """
    from plugbay.core.transport.secure import CHANNEL_OPTIONS, grpc_target
    from plugbay.network.resolver import Endpoint
    from plugbay.network.targets import make_resolver, parse_target
    from plugbay.network.tls import NetworkTLS

    if "://" not in target:
        raise ConfigError(f"{target!r} is not a target: pass @REATTACH_FILE, reattach JSON, or a target"
                          " like static:///HOST:PORT, dns:///NAME:PORT, kubernetes:///NS/SERVICE:PORT,"
                          " unix:///PATH")
    parsed = parse_target(target)
    if parsed.scheme == "static" and len(parsed.endpoints) > 1:
        raise ConfigError(f"{target!r} names {len(parsed.endpoints)} endpoints; info, call and health talk to one"
                          " replica: name one, static:///HOST:PORT")
    if tls.insecure and (tls.ca or tls.cert or tls.key):
        raise ConfigError("--insecure and --ca/--cert/--key exclude each other; pick one")
    if not tls.insecure and not tls.ca:
        raise ConfigError(f"{target!r}: pass --insecure for plaintext or --ca/--cert/--key for mTLS")
    server_name = _server_name(tls)
    found: list[Endpoint] = []
    resolver = make_resolver(parsed, name="cli", allow_loopback=tls.allow_loopback)
    # kubernetes:/// discovery loads this host's own kubeconfig: these commands have no flag for one
    with output.kubernetes_flags(None) if parsed.scheme == "kubernetes" else nullcontext():
        resolver.start(lambda endpoints: found.extend(endpoints) if not found else None)
    resolver.close()
    ready = [e for e in found if e.ready and not e.terminating]
    if not ready:
        note = getattr(resolver, "empty_note", "")  # why DNS or EndpointSlices found nothing, when known
        raise TargetUnreachableError(f"{target!r} names no ready endpoint (discovery found {len(found)}"
                                     f"{': ' + note if note and not found else ''});"
                                     " check that the plugin's replicas run and are ready")
    endpoint = ready[0]
    if endpoint.network == "unix" and not Path(endpoint.address).is_socket():
        # said now, not after the whole --timeout of a channel that can never connect
        raise TargetUnreachableError(f"{target!r}: no socket at {endpoint.address}; check the path, and that"
                                     " the plugin runs")
    address = grpc_target(endpoint.network, endpoint.address)
    facts: dict[str, Any] = {"network": endpoint.network, "address": endpoint.address, "endpoints": len(ready)}
    if tls.insecure:
        facts["tls"] = False
        return Reached(grpc.insecure_channel(address, options=[*CHANNEL_OPTIONS, *options]), target, facts)
    network_tls = NetworkTLS(cert_file=tls.cert, key_file=tls.key, ca_file=tls.ca or "", server_name=server_name)
    facts["tls"] = True
    return Reached(grpc.secure_channel(address, network_tls.credentials(),
                                       options=[*CHANNEL_OPTIONS, *network_tls.options(), *options]), target, facts,
                   network_tls)


def _server_name(tls: Tls) -> str | None:
    """--server-name as the certificate's check uses it: the name alone (a space pasted around it dropped);
    refused when it is no name, or where no certificate is checked (--insecure)."""
    if tls.server_name is None:
        return None
    name = tls.server_name.strip()
    if not name:
        raise ConfigError("--server-name is empty: give the name the plugin's certificate carries (a"
                          " subjectAltName), or leave it out to check the address dialed")
    if any(c.isspace() for c in name):
        raise ConfigError(f"--server-name {clip(printable(repr(tls.server_name)), 100)} holds whitespace: give one"
                          " name the plugin's certificate carries (a subjectAltName), such as kv.example.com")
    if tls.insecure:
        raise ConfigError("--server-name is the name the plugin's TLS certificate carries: give it with"
                          " --ca/--cert/--key, not --insecure")
    return name


@contextmanager
def reach(target: str, tls: Tls, *, options: Sequence[tuple[str, Any]] = ()) -> Iterator[Reached]:
    """A channel to the plugin ``target`` names (with the gRPC channel ``options`` given); everything opened
    is closed on exit, the channel's close given up after a bound (a busy peer): its thread is abandoned."""
    config = load_reattach(target)
    if config is not None and tls.server_name is not None:
        # a reattach config's TLS is AutoMTLS, checked against the certificate its plugin announced: no name
        raise ConfigError("--server-name is for a network target over TLS (--ca/--cert/--key); a reattach config"
                          " carries the plugin's own AutoMTLS certificate, checked without a name: leave it out")
    if config is None:
        reached = _network_target(target, tls, options)
        try:
            yield reached
        finally:
            _close_polled(reached.channel)
        return
    if config.handshake.multiplex:
        # its multiplexed connection takes no second client: a dial would wait out the whole --timeout
        raise ConfigError("this reattach config is of a plugin run with a multiplexed broker (plugbay run"
                          " --multiplex, or multiplex_broker=True), which cannot be reattached (as in go-plugin);"
                          " run it without --multiplex to use info, call and health on its reattach config")
    from plugbay.core.host.connect import dial

    runner = attach_runner(dict(config.runner))
    info = config.handshake
    relay_dir = make_tempdir("plugbay-cli-")
    handle: list[int] = []  # the proven socket's O_PATH handle the channel dials, closed after it
    try:
        network, address = runner.plugin_to_host(info.network, info.address)
        conn = dial(network, _proven(runner, network, address, config, handle), tls=config.client_cert,
                    server_cert_der=info.server_cert, relay_dir=relay_dir, options=options)
    except BaseException:
        _release(relay_dir, handle, runner)
        raise
    facts = {"name": config.name, "runner": str(config.runner.get("kind", "?")),
             "id": str(config.runner.get("id", "")), "core_version": info.core_version,
             "app_version": info.app_version, "protocol": info.protocol, "network": info.network,
             "address": info.address, "mapped_address": output.mapped_address(network, address),
             "tls": info.server_cert is not None, "connection": conn.mode, "multiplex": info.multiplex}
    try:
        yield Reached(conn.channel, target if not target.lstrip().startswith("{") else "reattach JSON", facts)
    finally:
        try:
            _close_polled(conn.channel, close=conn.close)  # bounded as a network target's is (a busy peer)
        finally:  # a second Ctrl-C during that wait (the command looks stuck) must not leave these
            _release(relay_dir, handle, runner)


def _proven(runner: Any, network: str, address: str, config: Any, handle: list[int]) -> str:
    """The address to dial once the runner proves the plugin listens at ``address`` (plugin_to_host() proved
    the path by name): a unix socket through an O_PATH handle on its inode (appended to ``handle``), as the
    Client dials it, since a plugin may rename another server's socket onto the path after that proof."""
    from plugbay.core.host.socketpin import Proven, prove_listener
    from plugbay.runners.base import NOT_LISTENING

    info = config.handshake
    found = prove_listener(runner, network, address, info, config.name, reattached=True)
    if isinstance(found, Proven):
        if found.handle is not None:
            handle.append(found.handle)
        return found.address
    if found == NOT_LISTENING:
        raise TargetUnreachableError(f"nothing listens at {clip(repr(address), 200)} any more, the {network} socket"
                                     f" the reattach config of plugin {config.name!r} names; check that the plugin"
                                     " runs")
    target = "unix:///PATH" if network == "unix" else "static:///HOST:PORT"
    raise UnprovenAddressError(config.name, info.network, info.address, found,
                               opt_out=f"reach it as a network target ({target} --insecure, which proves nothing of"
                               " who listens)")


def _release(relay_dir: str, handle: list[int], runner: Any) -> None:
    """What reach() held for a reattach config: the relay's folder, the socket's handle (after the channel:
    nothing dials its number any more), the runner's claim (the plugin keeps running)."""
    try:
        shutil.rmtree(relay_dir, ignore_errors=True)
        while handle:
            os.close(handle.pop())
    finally:
        runner.detach()


_CLOSE_WAIT = 2.0


def _close_polled(channel: grpc.Channel, wait: float = 1.0, close: Callable[[], None] | None = None) -> None:
    """Close ``channel`` (by ``close``, when given: what also stops what carries it) once gRPC's thread that
    polled its state for a subscriber (a wait for the connection, the early TLS check) has seen it go: it keeps
    polling up to 0.2 s after the last unsubscribe, and one caught by the close, or by the interpreter's exit,
    prints a thread traceback above the command's error."""
    state = getattr(channel, "_connectivity_state", None)  # grpc's own; absent in another gRPC: close at once
    deadline = time.monotonic() + wait
    while state is not None and getattr(state, "polling", False) and time.monotonic() < deadline:
        time.sleep(0.02)
    # gRPC's close waits for its calls to end, which a peer that keeps the connection busy (HTTP/2 frames
    # that never end a header block) delays without end: the command ends after _CLOSE_WAIT regardless
    closing = threading.Thread(target=close or channel.close, name="plugbay-cli-close", daemon=True)
    closing.start()
    closing.join(_CLOSE_WAIT)


def describe_target(target: str) -> str:
    return target if len(target) < 80 else json.dumps(target[:77] + "...")
