"""The Docker runner: a plugin as a container on the local (or DOCKER_HOST) engine.

Two transports:

* ``unix`` (default, like Vault's containerized plugins): the container has no
  network; the host's socket folder is bind-mounted at ``/plugbay/sock`` and
  PLUGIN_UNIX_SOCKET_DIR and TMPDIR point there (go-plugin 1.0.1 plugins put
  their socket in $TMPDIR; a TMPDIR in ``env`` wins). ``plugin_to_host`` maps the in-container path back
  to the host path. A non-root container user gets the folder's group as a
  supplementary group, and PLUGIN_UNIX_SOCKET_GROUP asks the plugin to hand
  its socket to that group so a non-root host can connect.
* ``tcp``: the plugin listens on ``0.0.0.0:<container_port>`` (PLUGBAY_LISTEN),
  published on 127.0.0.1 with a random host port that ``plugin_to_host`` maps
  to. The container's own address is never dialled.

Every container is labelled ``plugbay.managed=true`` and with the host
session (``plugbay.session``) so :func:`sweep` can remove the containers of
hosts that are gone.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.errors import ReattachError, RunnerError
from plugbay.runners.command import check_text_env
from plugbay.runners.base import (AttachedRunner, LaunchSpec, Runner, killed_while_starting, register_reattacher,
                                  reuse_refused, start_deadline)
from plugbay.runners.docker.engine import (CONTAINER_SOCKET_DIR, ENGINE_TIMEOUT, SOCKET_DIR, SOCKET_DIR_PREFIX,
                                            SOCKET_OWNED, SOCKET_TOKEN, bind_mount, check_runtime, create_container,
                                            engine, host_gid, mark_socket_dir, parse_mount,
                                            prepare_socket_dir, published_port, transport_settings)
from plugbay.runners.docker.madehere import engine_info, forget_made, identity_of, record_made
from plugbay.runners.docker.sweep import sweep
from plugbay.runners.docker.hardening import (DEFAULT_PIDS_LIMIT, DEFAULT_TMPFS_SIZE, ISOLATED_NETWORK,
                                               NETWORK_TRIES, hardened_args, network_id, network_swept,
                                               stale_network, tmpfs_mounts)
from plugbay.runners.docker.options import TRANSPORTS, check_settings, cpus_to_nano
from plugbay.runners.docker.budget import StartBudget
from plugbay.runners.docker.adopt import (IMAGE, claim, container_image, prove_container, reattach_id,
                                          reattach_image, reattach_labels, reattach_transport)
from plugbay.runners.docker.addresses import container_to_host, host_to_container
from plugbay.runners.docker.createargs import add_extra_args, checked_options
from plugbay.runners.docker.checks import check_digest, check_secure_image, find_image
from plugbay.runners.docker.logs import ContainerLogStream
from plugbay.runners.docker.output import ContainerOutput
from plugbay.runners.docker.refusal import engine_refused
from plugbay.runners.docker.sockethandles import SocketHandles
from plugbay.runners.docker.teardown import ContainerTeardown
from plugbay.runners.docker.unanswered import create_or_clean, create_token
from plugbay.runners.docker.waiter import ExitWaiter
from plugbay.runners.reattachkey import SECRET, new_secret, secret_of
from plugbay.runners.session import managed_labels

__all__ = ["DockerRunner", "sweep", "CONTAINER_SOCKET_DIR"]


class DockerRunner(ContainerTeardown, ContainerOutput, Runner):
    """Runs a plugin image as a container. One instance runs the plugin once.

    Secure defaults: every capability dropped, no-new-privileges, a read-only root
    with tmpfs ``writable_dirs`` (``/tmp``), a pids limit, and for ``tcp`` the
    isolated network (see plugbay.runners.docker.hardening); each is an option.

    ``stop_timeout`` (seconds, None: the engine's 10 s and kill()'s 2 s) is how long a stop waits
    after SIGTERM before SIGKILL: the container's StopTimeout (``docker stop``, an engine shutdown,
    rounded up to whole seconds) and the grace of ``kill()`` called without one. A Client passes
    its ``kill_grace`` to kill(), which then wins. ``engine_timeout`` (seconds) bounds each engine
    request (a stop's: plus its grace): an engine that does not answer is an EngineUnavailableError.
    """

    def __init__(self, image: str, *, transport: str = "unix", user: str | None = None,
                 runtime: str | None = None, mem_limit: str | int | None = None, nano_cpus: int | None = None,
                 cpus: float | None = None, pids_limit: int | None = DEFAULT_PIDS_LIMIT, read_only: bool = True,
                 writable_dirs: Sequence[str] = ("/tmp",), tmpfs_size: str = DEFAULT_TMPFS_SIZE,
                 network: str | None = ISOLATED_NETWORK, cap_drop: Sequence[str] = ("ALL",),
                 no_new_privileges: bool = True,
                 env: Mapping[str, str] | None = None, mounts: Sequence[Any] = (),
                 tmpfs: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
                 entrypoint: Sequence[str] | None = None, command: Sequence[str] | None = None,
                 digest: str | None = None, container_port: int = 4000, name: str | None = None,
                 socket_gid: int | None = None, stop_timeout: float | None = None,
                 engine_timeout: float = ENGINE_TIMEOUT, extra_create_args: Mapping[str, Any] | None = None) -> None:
        kept = check_settings(locals())  # before anything is made: see options
        image, digest, writable_dirs = kept["image"], kept["digest"], kept["writable_dirs"]
        self.image = image
        self.transport = transport
        self.user = user
        self.runtime = runtime
        self.mem_limit = kept["mem_limit"]
        self.nano_cpus = cpus_to_nano(kept["cpus"], kept["nano_cpus"])
        self.pids_limit = kept["pids_limit"]
        self.read_only = read_only
        self.network = network
        self.cap_drop = kept["cap_drop"]
        self.no_new_privileges = no_new_privileges
        self.env = dict(env or {})
        self.mounts = [parse_mount(m) for m in mounts]
        self.tmpfs = dict(tmpfs or {})
        self.writable_dirs = writable_dirs
        self.tmpfs_size = tmpfs_size
        tmpfs_mounts(self.writable_dirs, tmpfs_size, self.tmpfs)  # bad paths fail here, not at start
        self.entrypoint, self.command = kept["entrypoint"], kept["command"]
        self.digest = digest
        self.container_port = container_port
        self.container_name = name or f"plugbay-{uuid.uuid4().hex[:12]}"
        self.socket_gid = kept["socket_gid"]
        self.stop_timeout = kept["stop_timeout"]
        self.engine_timeout = kept["engine_timeout"]
        self.labels, self.extra_create_args = checked_options(labels, extra_create_args, transport)
        self._client: Any = None
        self._container_id = ""
        self._host_socket_dir: str | None = None
        self._socket_handles = SocketHandles()  # what the host dials: see sockethandles
        self._owns_socket_dir = False
        self._given_dir: os.stat_result | None = None  # a caller's socket folder as given (kill gives it back)
        self._socket_token = ""
        self._reattach_secret = new_secret()  # reattach data holds it, the container's labels its digest (reattachkey)
        self._host_port: int | None = None
        self._pumps: dict[str, ContainerLogStream] = {}
        self._final_state: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._killed = False
        self._attached = False
        self._detached = False  # detach() was called: start() refuses (kill() still removes the container)
        self._began = False  # start() or attach() was called (never cleared: detach() drops the engine client)
        self._waiter: ExitWaiter | None = None
        self._verified_image = ""  # the image id check_secure_config() proved
        self._adopt: Any = None  # the container attach() proved, claimed once adopted() says the reattach held
        self._claimed: tuple[str, str] | None = None  # adopted()'s claim: (former name, claimed name)

    # --- identity -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.image

    @property
    def id(self) -> str:
        return self._container_id

    @property
    def exit_notice_time(self) -> float:
        # The engine answers the wait request once containerd has reported the
        # exit and the state is written: well after the socket broke when loaded.
        return 3.0

    @property
    def private_transport(self) -> bool:
        return self.transport == "unix"  # tcp: a published port and a container network

    @property
    def broker_socket_dir(self) -> str | None:
        return self._host_socket_dir if self.transport == "unix" else None  # also a reattach's: the mount

    @property
    def host_port(self) -> int | None:
        """The 127.0.0.1 port the plugin's port is published on (tcp transport)."""
        return self._host_port

    # --- start ----------------------------------------------------------------

    @property
    def start_called(self) -> bool:
        return self._began

    def start(self, spec: LaunchSpec) -> None:
        check_text_env(spec.env, f"DockerRunner for {self.image!r}")
        with self._lock:
            ended = "killed" if self._killed else "detached" if self._detached else ""
            began, self._began = self._began, True
        if ended or began:
            raise reuse_refused(f"DockerRunner for {self.image!r}", ended or "already started", "container")
        budget = StartBudget(f"DockerRunner for {self.image!r}", self.engine_timeout, spec.deadline)
        try:
            budget.open()
            self._client = engine(self.engine_timeout)  # the API version is known by now: no request
            self._start(spec, budget)
            with self._lock:
                killed = self._killed
        except BaseException as exc:
            with self._lock:
                killed, self._killed = self._killed, True  # a later kill() has nothing left to do
            self._cleanup(remove=True, grace=0)
            if killed and isinstance(exc, Exception):  # the kill() removed what this step needed
                raise killed_while_starting(f"DockerRunner for {self.image!r}", "container", "removed it") from exc
            raise
        finally:
            budget.close()
        if killed:  # a kill() from another thread came before the container existed: remove it now
            self._cleanup(remove=True, grace=0)
            raise killed_while_starting(f"DockerRunner for {self.image!r}", "container", "removed it")

    def _start(self, spec: LaunchSpec, budget: StartBudget) -> None:
        from docker.errors import APIError

        client = budget.client
        # the id SecureConfig checked, not the name again: a retag meanwhile must not change what runs
        image = budget.call(lambda: find_image(client, self._verified_image or self.image), "look up the image")
        if self.digest is not None:
            check_digest(image, self.image, self.digest)
        # before the create: the container's record names its engine (a sweep of another engine leaves it);
        # the runtime is checked in the same answer
        info = budget.call(lambda: engine_info(client, "start it again"), "read engine info")
        if self.runtime:
            check_runtime(info, str(self.runtime))
        made_by = identity_of(info)
        # tcp: no host folder is mounted, and the host's folder path would lead the plugin's own sockets
        # (a per-connection broker's) to a folder the container does not have
        env = {**self.env, **(spec.env if self.transport == "unix" else spec.env_without_host_folder())}
        gid: int | None = None
        mounts = list(self.mounts)
        if self.transport == "unix":
            self._host_socket_dir = spec.socket_dir or make_tempdir(SOCKET_DIR_PREFIX)
            self._owns_socket_dir = spec.socket_dir is None
            self._given_dir = None if spec.socket_dir is None else os.lstat(spec.socket_dir)
            gid = prepare_socket_dir(self._host_socket_dir, self.socket_gid if self.socket_gid is not None
                                     else host_gid(spec.env.get("PLUGIN_UNIX_SOCKET_GROUP")))
            self._socket_token = mark_socket_dir(self._host_socket_dir)  # a reattach proves the folder by it
            env.pop("PLUGBAY_LISTEN", None)
            mounts.append(bind_mount(self._host_socket_dir, CONTAINER_SOCKET_DIR))
        transport_env, args = transport_settings(self.transport, self.container_port, gid)
        # a TMPDIR the caller gave wins over the socket folder (writes there reach the host's disk; see docs/docker.md)
        env = {**transport_env, **env, **{k: v for k, v in transport_env.items() if k != "TMPDIR"}}
        isolated = None  # the isolated network's verified id, if the container joins it
        # None: the default bridge, containers see each other; the caller's network_mode: theirs (createargs)
        if self.transport == "tcp" and self.network and "network_mode" not in self.extra_create_args:
            args["network"] = isolated = budget.call(lambda: network_id(client, str(self.network)), "find its network")
        labels = {**self.labels, **spec.labels, **managed_labels(), **create_token(), IMAGE: self.image,
                  **reattach_labels(self._reattach_secret, self.transport, self.container_port)}
        if self._host_socket_dir:
            labels.update({SOCKET_DIR: self._host_socket_dir, SOCKET_TOKEN: self._socket_token,
                           SOCKET_OWNED: str(self._owns_socket_dir).lower()})
        args.update(image=image.id, environment=env, labels=labels, name=self.container_name, mounts=mounts,
                    stdin_open=False, tty=False)
        args.update(hardened_args(self, image.attrs["Config"].get("User")))
        add_extra_args(args, self.extra_create_args)
        try:
            for tries_left in range(NETWORK_TRIES, 0, -1):
                try:
                    self._create_and_start(args, budget, made_by)
                    break
                except APIError as exc:
                    if isolated is None or args.get("network") != isolated or \
                            not stale_network(exc, args, str(self.network)):
                        raise  # not our verified id (extra_create_args chose the network): the caller's to fix
                    # the network verified by an earlier start (or removed since the create: a sweep) is gone:
                    # the container goes, and once more on a network made anew
                    if self._container_id:
                        budget.call(lambda: client.api.remove_container(self._container_id, force=True),
                                    "remove it")
                        forget_made(self._container_id)
                        self._container_id = ""
                    if tries_left == 1:
                        raise network_swept(str(self.network)) from exc
                    args["network"] = isolated = budget.call(
                        lambda: network_id(client, str(self.network), again=True), "remake it")
        except APIError as exc:
            raise engine_refused(self.image, exc, "DockerRunner's entrypoint=/command= (else the image's"
                                 " ENTRYPOINT/CMD)", "DockerRunner's options (mounts, user, runtime, network,"
                                 " extra_create_args)") from exc
        if self.transport == "tcp":
            container = client.containers.prepare_model({"Id": self._container_id})  # its port: the engine's pick
            self._host_port = budget.call(lambda: published_port(container, self.container_port), "inspect its port")
        for which in ("stdout", "stderr"):  # on the runner's client: they outlive the start
            self._pumps[which] = ContainerLogStream(self._client.api, self._container_id, which, self._running,
                                                     tty=bool(args.get("tty")))
        self._watch_exit()
        for pump in self._pumps.values():  # bounded: a log request never answered shows up as missing output
            budget.wait(pump.wait_open, "open the container's logs")
        refused = next((pump.error for pump in self._pumps.values() if pump.error), None)
        if refused is not None:  # the handshake line could never be read: fail now, not at start_timeout
            raise RunnerError(
                f"cannot read the output of container {self._container_id[:12]} ({self.image}): {refused}."
                " plugbay reads the plugin's handshake line from the container's logs: keep a logging driver"
                " the engine can read back (plugbay sets json-file; check log_config in extra_create_args)")

    def _create_and_start(self, args: dict[str, Any], budget: StartBudget, made_by: str | None) -> None:
        client = budget.client
        # no create answer, no id for kill(): create_or_clean() finds it by name, on the runner's client (see budget)
        self._container_id = create_or_clean(
            lambda: budget.call(lambda: create_container(client, args, self.extra_create_args), "create the container"),
            self._client.api, args.get("name"), args["labels"])
        record_made(self._container_id, made_by)  # before anything else can fail: a sweep removes only the recorded
        budget.call(lambda: client.api.start(self._container_id), "start the container")

    def _watch_exit(self) -> None:
        self._waiter = ExitWaiter(self._container_id, self._inspect, lambda: self._final_state, self.engine_timeout)
        self._waiter.start()

    def check_secure_config(self, secure: Any) -> None:
        """SecureConfig for images: its sha256 checksum is the image id (or a repo digest). Within a Client's
        start its lookup is bounded by what is left of the start_timeout, as start()'s requests are."""
        budget = StartBudget(f"DockerRunner for {self.image!r}", self.engine_timeout, start_deadline())
        self._verified_image = check_secure_image(self.image, secure, budget)

    # --- addresses --------------------------------------------------------------

    @property
    def maps_unix_to_own_handles(self) -> bool:
        return True  # sockethandles: the host dials a handle on the socket checked in the mounted folder

    def plugin_to_host(self, network: str, address: str) -> tuple[str, str]:
        if self.transport == network == "unix" and not self._host_socket_dir:  # attached by data without it
            raise ReattachError(
                f"the reattach data for container {self._container_id[:12]} (transport 'unix') lacks 'host_socket_dir':"
                f" the host folder bind-mounted at {CONTAINER_SOCKET_DIR}, the only way to the plugin's socket. Pass"
                " the JSON that Client.reattach_config().to_json() produced, unedited (its runner part holds it)")
        return container_to_host(self.transport, network, address, host_socket_dir=self._host_socket_dir,
                                 container_id=self.id, container_port=self.container_port,
                                 host_port=self._host_port, handles=self._socket_handles)

    def host_to_plugin(self, network: str, address: str) -> tuple[str, str]:
        return host_to_container(self.transport, network, address, self._host_socket_dir, self._attached)

    def release_address(self, network: str, address: str) -> None:
        if network == "unix":
            self._socket_handles.release(address)

    # --- wait / kill (_inspect, wait, detach, kill, force_kill: teardown.ContainerTeardown) ---

    # --- output / diagnosis (stdout_lines, stderr_lines, stderr_tail, diagnose, exit_reason: output.ContainerOutput)

    # --- reattach ----------------------------------------------------------------------

    def reattach_data(self) -> dict[str, Any]:
        return {"kind": "DockerRunner", "id": self._container_id, "image": self.image,
                "transport": self.transport, "host_socket_dir": self._host_socket_dir,
                "owns_socket_dir": self._owns_socket_dir, "container_port": self.container_port,
                "host_port": self._host_port, SECRET: self._reattach_secret}

    @classmethod
    def attach(cls, data: Mapping[str, Any], *, take_ownership: bool = True) -> DockerRunner:
        """The runner of a container another host process started (reattach).

        ``take_ownership=False`` only looks (plugbay health/info/call): the container stays its
        starting host's, so a sweep still spares it while that host lives. Otherwise this host becomes
        its owner once :meth:`adopted` is called (by a Client whose reattach succeeded), not here. The
        data is untrusted: the container must carry plugbay's labels, and a socket folder must be the
        one named in its labels holding the marker plugbay wrote, and the data's reattach secret and transport
        the ones it was labelled with (else ReattachError: nothing is touched); its image is the labels' (or engine's).
        """
        container_id = reattach_id(data)
        transport, port = reattach_transport(data, TRANSPORTS)
        runner = cls(reattach_image(data), transport=transport, container_port=port)  # the container's, once proven
        runner._client = engine()  # attach() takes no engine_timeout: the default bounds it
        runner._container_id = container_id
        runner._attached = runner._began = True
        socket_dir = data.get("host_socket_dir")
        try:
            container = prove_container(runner._client, container_id, data, transport, port)
            # by id from here on: the data may name it, and claim() renames it (kill() would find nothing)
            runner._container_id, runner.image = container.id, container_image(container)
            if runner.transport == "tcp":  # the engine says where it is published, not the data
                runner._host_port = published_port(container, runner.container_port)
            runner._watch_exit()  # its engine client may fail too: the runner's then goes with it
        except BaseException:
            runner._client.close()
            raise
        runner._host_socket_dir, runner._reattach_secret = socket_dir, secret_of(data)  # proven: passed on
        labels = dict(container.labels or {})  # they say, not the data; kill() proves the folder by the token again
        runner._owns_socket_dir, runner._socket_token = labels.get(SOCKET_OWNED) == "true", labels.get(SOCKET_TOKEN, "")
        runner._adopt = container if take_ownership else None
        return runner

    def adopted(self) -> None:
        container, self._adopt = self._adopt, None
        with self._lock:
            ended = self._killed or self._detached
        if container is not None and not ended:  # detached: a close() came first, nothing to own
            self._claimed = claim(container)


def _reattach(data: Mapping[str, Any]) -> AttachedRunner:
    return DockerRunner.attach(data)


register_reattacher("DockerRunner", _reattach)
