"""``plugbay run``: start one plugin, print its handshake facts, keep it up until Ctrl-C.

It is a plain plugbay Client with an empty plugin set (nothing is dispensed;
start() launches, handshakes, connects and checks health). The plugin's log
lines arrive through ``logging`` with their hclog levels. The first Ctrl-C
(or SIGTERM) stops the plugin gracefully (GRPCController.Shutdown, grace,
kill) and removes what the run made (socket folder, container or pod, the
reattach file: ``--reattach-out``'s, or the private folder of the run's that holds it); a second
Ctrl-C kills the plugin at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from plugbay.cli import output
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.errors import ConfigError

_log = logging.getLogger("plugbay.cli")


def _parse_cookie(cookie: str | None) -> tuple[str, str]:
    if not cookie:
        raise ConfigError("--cookie KEY=VALUE is required: the magic cookie the plugin expects"
                          " (go-plugin's examples use --cookie BASIC_PLUGIN=hello)")
    key, sep, value = cookie.partition("=")
    if not sep or not key or not value:
        raise ConfigError(f"--cookie {cookie!r} must be KEY=VALUE with both parts non-empty")
    return key, value


def _parse_versions(text: str) -> list[int]:
    try:
        versions = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        versions = []
    if not versions or any(v < 1 for v in versions):
        raise ConfigError(f"--protocol-versions {text!r} must be positive integers separated by commas, e.g. 1,2")
    return versions


def _check_reattach_out(out: Path) -> None:
    """Refuse a --reattach-out this run could not write (or should not replace) as a regular file."""
    try:
        existing = os.lstat(out)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise ConfigError(f"--reattach-out {out}: {exc.strerror}; give a file in an existing, writable folder")
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise ConfigError(f"--reattach-out {out} is not a regular file (a folder, link, pipe or device);"
                          " give a file path")
    if existing is not None and existing.st_uid != os.geteuid():
        raise ConfigError(f"--reattach-out {out} belongs to another user (it would hold the AutoMTLS key);"
                          " give a file of your own")
    # the mode bits too: root may write any file, and would replace (then remove) a read-only one
    if existing is not None and (not os.access(out, os.W_OK) or not existing.st_mode & 0o222):
        raise ConfigError(f"--reattach-out {out} exists and is read-only; give another file")
    if existing is None and not os.access(out.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--reattach-out {out}: cannot write a file there; give a file in an existing,"
                          " writable folder")
    if existing is not None and existing.st_size and not _is_reattach_file(out):
        # the run replaces it, then removes it when it ends: a file of the user's would be lost
        raise ConfigError(f"--reattach-out {out} exists and is not a reattach file; give another path,"
                          " or remove it first")


def _is_reattach_file(path: Path) -> bool:
    """Whether ``path`` holds what a run writes (a JSON object with a handshake and a runner)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get("handshake"), dict) and "runner" in data


def _runner(cmd: str | None, image: str | None, transport: str | None, pod: str | None, namespace: str | None,
            kubeconfig: str | None, writable: tuple[str, ...] = (), trusted: tuple[str, ...] = ()) -> tuple[Any, str]:
    for flag, value in (("--cmd", cmd), ("--image", image), ("--pod", pod)):
        if value is not None and not value.strip():  # given, but as '': not the same as leaving it out
            raise ConfigError(f"{flag} is empty; give the plugin's {'command line' if flag == '--cmd' else 'image'}")
    chosen = [x for x in (cmd, image, pod) if x]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of --cmd 'COMMAND', --image IMAGE or --pod IMAGE")
    # an option of another runner would be ignored: the plugin would run otherwise than asked
    if transport is not None and not image:
        raise ConfigError(f"--transport {transport} needs --image IMAGE: only a Docker container has a transport"
                          " to choose")
    if writable and not (image or pod):
        raise ConfigError("--writable needs --image IMAGE or --pod IMAGE: a local process (--cmd) has no"
                          " read-only root")
    if trusted and not cmd:
        raise ConfigError("--trusted-network needs --cmd: only a local process's announced address is checked"
                          " against this machine's")
    output.refuse_unused((("--namespace", namespace), ("--kubeconfig", kubeconfig)), bool(pod), "--pod IMAGE",
                         "it only applies to a Kubernetes pod")
    if cmd:
        from plugbay.runners.announced import read_networks
        from plugbay.runners.process import ProcessRunner

        try:
            argv = shlex.split(cmd)
        except ValueError as exc:  # an unbalanced quote
            raise ConfigError(f"--cmd {cmd!r} cannot be split into words ({exc}); balance its quotes") from None
        if not argv:
            raise ConfigError("--cmd is empty; give the plugin's command line")
        networks = read_networks(trusted, "--trusted-network")  # refused in the flag's words, not the runner's
        return ProcessRunner(argv, trusted_networks=[str(n) for n in networks]), "process"
    if image:
        try:
            from plugbay.runners.docker import DockerRunner
        except ImportError:
            raise ConfigError("--image needs the Docker SDK; install plugbay[docker]") from None
        return DockerRunner(image, transport=transport or "unix", writable_dirs=("/tmp", *writable)), "docker"
    try:
        from plugbay.runners.kubernetes import KubernetesRunner
    except ImportError:
        raise ConfigError("--pod needs the Kubernetes client; install plugbay[kubernetes]") from None
    assert pod is not None
    bad = [d for d in writable if not d.startswith("/")]
    if bad:
        raise ConfigError(f"--writable {bad[0]!r} must be an absolute path in the container, e.g. /data")
    with output.kubernetes_flags("--kubeconfig"):
        return KubernetesRunner(pod, namespace=namespace, kubeconfig=kubeconfig,
                                writable_dirs=("/tmp", *writable)), "kubernetes"


class _Interrupts:
    """First SIGINT/SIGTERM: stop gracefully. Second: kill the plugin at once."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.stop = threading.Event()
        self.count = 0
        self.runner: Any = None
        self.started = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.stop.set()
        if not self.started and self.count == 1:  # still starting: start() tears down what it made
            raise output.Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        if self.count == 1:
            output.say_status("stopping the plugin (Ctrl-C again to kill it at once)", style="yellow",
                              as_json=self.as_json)
            return
        output.say_status("killing the plugin", style="bold red", as_json=self.as_json)
        if self.runner is not None:
            try:
                self.runner.kill(0)
            except Exception as exc:  # noqa: BLE001 - the graceful path still cleans up
                _log.debug("kill: %s", exc)


@click.command(epilog="""\b
Examples:
  plugbay run --cmd '.venv/bin/python examples/kv/plugin.py' --cookie BASIC_PLUGIN=hello --reattach-out kv.json
  plugbay run --image plugbay-kv:latest --transport tcp --writable /data --cookie BASIC_PLUGIN=hello
  plugbay run --pod plugbay-kv:latest --namespace plugins --cookie BASIC_PLUGIN=hello
Ctrl-C stops the plugin gracefully and removes what the run made; Ctrl-C twice kills it.""")
@click.option("--cmd", help="Run the plugin as a local process: its shell-style command line.")
@click.option("--trusted-network", "trusted", multiple=True, metavar="CIDR",
              help="With --cmd: a network (e.g. 10.231.0.0/16) the plugin may announce an address in that is not"
                   " this machine's (it runs in another network namespace); repeat for more.")
@click.option("--trust-announced-address", "trust", is_flag=True,
              help="With --cmd: dial the address the plugin announces without proving that the started process"
                   " (or one it started) listens there; only for a command that hands the serving to a process"
                   " it does not start (a `docker run` wrapper).")
@click.option("--image", help="Run the plugin image in a Docker container.")
@click.option("--transport", type=click.Choice(["unix", "tcp"]),
              help="With --image: a bind-mounted unix socket (the default) or a port published on 127.0.0.1.")
@click.option("--writable", multiple=True, metavar="DIR",
              help="With --image or --pod: a writable folder (tmpfs) besides /tmp on the read-only root;"
                   " repeat for more.")
@click.option("--pod", help="Run the plugin image as a Kubernetes pod.")
@click.option("--namespace", help="With --pod: the namespace (default: the kubeconfig's).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="With --pod: the kubeconfig file.")
@click.option("--cookie", help="The magic cookie KEY=VALUE the plugin expects (required).")
@click.option("--protocol-versions", default="1", show_default=True, help="App protocol versions, e.g. 1,2.")
@click.option("--automtls/--no-automtls", default=None,
              help="AutoMTLS: a fresh client certificate, TLS to the plugin. Default: the library's, on for"
              " --image with --transport tcp and for --pod (a published port or a pod any local process could"
              " reach), off for --cmd and the unix transport.")
@click.option("--multiplex", is_flag=True, help="The multiplexed gRPC broker (one connection).")
@click.option("--reattach-out", type=click.Path(dir_okay=False), help="Write the reattach config JSON here "
              "(mode 0600; removed when the run ends). Default: a file in a private folder of the run's, its path"
              " printed as 'reattach file'.")
@click.option("--start-timeout", type=output.FloatRange(1, 3600), default=60.0, show_default=True)
@click.option("--kill-grace", type=output.FloatRange(0, 600), default=2.0, show_default=True,
              help="Seconds between Shutdown and a forced kill.")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as one JSON object (with 'reattach_file').")
def run(cmd: str | None, trusted: tuple[str, ...], trust: bool, image: str | None, transport: str | None,
        writable: tuple[str, ...], pod: str | None, namespace: str | None, kubeconfig: str | None,
        cookie: str | None, protocol_versions: str, automtls: bool | None, multiplex: bool, reattach_out: str | None,
        start_timeout: float, kill_grace: float, as_json: bool) -> int:
    """Start a plugin and keep it up until Ctrl-C, printing its handshake facts.

    The reattach config (for plugbay info/call/health/diagnose, or a host's
    ClientConfig(reattach=...)) goes to --reattach-out FILE, else to a file in
    a private folder of the run's (mode 0700): its path is printed, never the
    config, which holds the AutoMTLS key.
    """
    from plugbay.core.host.client import Client, ClientConfig
    from plugbay.core.protocol.handshake import HandshakeConfig

    key, value = _parse_cookie(cookie)
    versions = _parse_versions(protocol_versions)
    if trust and not cmd:  # a container's or pod's address is mapped by plugbay itself: nothing is proven there
        raise ConfigError("--trust-announced-address needs --cmd: only a local process's announced address is"
                          " proven to be the plugin's")
    runner, kind = _runner(cmd, image, transport, pod, namespace, kubeconfig, writable, trusted)
    out = Path(reattach_out) if reattach_out else None
    if out is not None:  # checked before the plugin starts: found only after, it would start for nothing
        _check_reattach_out(out)
    own_folder: str | None = None
    sockets: str | None = None
    if out is None:
        # never printed: the config holds the AutoMTLS key and the proof that lets a reattach stop the plugin, and
        # stdout is a log under systemd or in a container. A process plugin's socket folder goes in this folder
        # too: a sweep keeps it (and the config) while a plugin a killed run left behind still answers there
        own_folder = make_tempdir("plugbay-run-")
        out = Path(own_folder) / "reattach.json"
        sockets = own_folder if kind == "process" else None
    try:
        config = ClientConfig(HandshakeConfig(versions[-1], key, value), versioned_plugins={v: {} for v in versions},
                              runner=runner, auto_mtls=automtls, multiplex_broker=multiplex,
                              trust_announced_address=trust,
                              start_timeout=start_timeout, kill_grace=kill_grace, unix_socket_temp_dir=sockets,
                              logger=logging.getLogger(f"plugin.{runner.name}"))
        if multiplex:
            _log.warning("with --multiplex the plugin cannot be reattached (as in go-plugin): plugbay"
                         " info/call/health reach it only through a network target")
        try:
            client = Client(config)
        except ConfigError:
            if sockets is None:
                raise
            # the nested socket path is too long for this temp dir: the plugin's folder beside the run's, as
            # without it (a sweep then keeps the plugin's folder, not the config, after a SIGKILL of the run)
            client = Client(dataclasses.replace(config, unix_socket_temp_dir=None))
        written: tuple[int, int] | None = None  # the file this run wrote, as (device, inode)
        with _Interrupts(as_json) as interrupts:
            interrupts.runner = runner
            started = time.monotonic()
            try:
                with output.automtls_flag(), output.trust_flag():
                    client.start()
                interrupts.started = True
                reattach = client.reattach_config()
                # a new 0600 file moved into place: an existing file's mode (0644) would show the key
                fd, made = tempfile.mkstemp(prefix=".plugbay-reattach-", dir=out.parent)
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(reattach.to_json())
                        ident = os.fstat(f.fileno())
                    os.replace(made, out)
                except BaseException:
                    os.unlink(made)
                    raise
                written = (ident.st_dev, ident.st_ino)  # the file is this run's while it is still this one
                _print_facts(client, kind, versions, time.monotonic() - started, reattach, out, as_json)
                while not interrupts.stop.is_set():
                    if client.exited or client.runner.wait(0) is not None:
                        diagnosis = _diagnose(client)
                        client.kill()
                        output.error(f"plugin {client.name!r} exited with code {client.exit_code} while running:"
                                     f" {diagnosis}")
                        return output.FAILED
                    interrupts.stop.wait(0.25)
                return output.OK
            finally:
                client.kill()
                if written is not None:
                    _remove_if_ours(out, written)
                if own_folder is not None:  # before the word that nothing is left
                    shutil.rmtree(own_folder, ignore_errors=True)
                    own_folder = None
                if interrupts.stop.is_set():
                    output.say_status("plugin stopped; nothing left behind", style="green", as_json=as_json)
    finally:
        if own_folder is not None:  # the start failed before the loop above
            shutil.rmtree(own_folder, ignore_errors=True)


def _remove_if_ours(out: Path, written: tuple[int, int]) -> None:
    """Remove the reattach file this run wrote, unless another run (or the user) replaced it meanwhile."""
    try:
        now = os.lstat(out)
    except OSError:
        return
    if (now.st_dev, now.st_ino) == written:
        out.unlink(missing_ok=True)


def _diagnose(client: Any) -> str:
    try:
        return str(client.runner.diagnose())
    except Exception as exc:  # noqa: BLE001 - diagnosis is best effort
        return f"(no diagnosis: {exc})"


def _print_facts(client: Any, kind: str, versions: list[int], took: float, reattach: Any,
                 out: Path, as_json: bool) -> None:
    info = client.handshake  # the host-side (mapped) address
    announced = reattach.handshake
    facts = {"plugin": client.name, "runner": kind, "id": client.runner.id,
             "core_protocol": info.core_version, "app_protocol": client.negotiated_version,
             "host_versions": versions, "network": announced.network, "address": announced.address,
             "mapped_address": output.mapped_address(info.network, info.address), "tls": info.server_cert is not None,
             "connection": client.connection_mode, "multiplex": info.multiplex,
             "plugins": "unknown (the handshake does not name them; try plugbay info)",
             "started_in_s": round(took, 3), "reattach_file": str(out)}
    if as_json:
        output.emit_json(facts)
        return
    output.facts([(k.replace("_", " "), v) for k, v in facts.items() if v is not None])
    output.say("ready: press Ctrl-C to stop", style="bold green")
