"""How the stand-in really runs a pod's container: as a Docker container, or a local process.

Each backend returns a :class:`Box` the pod store polls for the container's
real state (running, exit code, OOM kill) and reads logs from. Container ports
are published on 127.0.0.1 only; the stand-in forwards port-forward streams to
``127.0.0.1:<published>`` and never dials a bridge address.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .podlogs import stamp_now


class ImageMissing(Exception):
    """The image is not on the engine (the stand-in never pulls: no registry here)."""


class ContainerConfigError(Exception):
    """The pod spec cannot run the image (kubelet's CreateContainerConfigError)."""


@dataclass
class BoxState:
    running: bool
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    error: str = ""


@dataclass
class ContainerRequest:
    pod_key: str
    image: str
    command: Sequence[str] | None
    args: Sequence[str] | None
    env: Mapping[str, str]
    ports: Sequence[int]
    labels: Mapping[str, str]
    working_dir: str | None = None
    user: str | None = None
    run_as_non_root: bool = False
    read_only: bool = False
    cap_drop: Sequence[str] = ()
    no_new_privileges: bool = False
    memory_bytes: int | None = None
    nano_cpus: int | None = None
    writable_dirs: Sequence[str] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class Box(Protocol):
    """A running (or ended) container of one pod."""

    kind: str
    id: str
    published: dict[int, int]

    def state(self) -> BoxState: ...
    def logs(self, follow: bool, tail: int | None) -> Iterator[bytes]:
        """The log with each line stamped (RFC3339Nano and a space), as the kubelet keeps it."""
        ...

    def restart(self) -> None: ...
    def stop(self, grace: float) -> None: ...
    def remove(self) -> None: ...


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _rmtree(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(version="auto", timeout=5)
        try:
            client.ping()
            return True
        finally:
            client.close()
    except Exception:
        return False


# --- Docker -----------------------------------------------------------------


class DockerBox:
    kind = "docker"

    def __init__(self, client: Any, container: Any, ports: Sequence[int], scratch: str | None) -> None:
        self._scratch = scratch
        self._client = client
        self._container = container
        self.id = container.id
        self.published: dict[int, int] = {}
        self._ports = list(ports)
        self._streams: list[Any] = []
        self._lock = threading.Lock()
        self._read_ports()

    def _read_ports(self) -> None:
        self._container.reload()
        bound = self._container.attrs["NetworkSettings"]["Ports"] or {}
        for port in self._ports:
            entries = bound.get(f"{port}/tcp") or []
            for entry in entries:
                if entry.get("HostIp") in ("127.0.0.1", ""):
                    self.published[port] = int(entry["HostPort"])

    def state(self) -> BoxState:
        import docker.errors

        try:
            self._container.reload()
        except docker.errors.NotFound:
            return BoxState(running=False, exit_code=137, error="container removed")
        st = self._container.attrs["State"]
        if st.get("Running"):
            if not self.published and self._ports:
                self._read_ports()
            return BoxState(running=True, started_at=st.get("StartedAt"))
        if st.get("Status") == "created":
            return BoxState(running=False)
        return BoxState(running=False, exit_code=int(st.get("ExitCode", 0)),
                        oom_killed=bool(st.get("OOMKilled")), started_at=st.get("StartedAt"),
                        finished_at=st.get("FinishedAt"), error=st.get("Error") or "")

    def logs(self, follow: bool, tail: int | None) -> Iterator[bytes]:
        import docker

        # A client of its own: a followed stream closed from another thread (a pod delete) went back
        # to the shared client's pool with a closed socket, and the next request failed on it.
        client = docker.from_env(version=self._container.client.api.api_version, timeout=60)
        try:
            stream = client.api.logs(self._container.id, stdout=True, stderr=True, stream=True, follow=follow,
                                     tail="all" if tail is None else tail, timestamps=True)
        except BaseException:
            client.close()
            raise
        with self._lock:
            self._streams.append(stream)
        try:
            yield from stream
        finally:
            with self._lock:
                if stream in self._streams:
                    self._streams.remove(stream)
            try:
                stream.close()
            except Exception:
                pass
            client.close()

    def restart(self) -> None:
        self._container.start()
        self.published.clear()
        self._read_ports()

    def stop(self, grace: float) -> None:
        import docker.errors

        try:
            self._container.stop(timeout=max(0, int(grace)))
        except docker.errors.NotFound:
            pass

    def remove(self) -> None:
        import docker.errors

        with self._lock:
            streams, self._streams = self._streams, []
        for stream in streams:
            try:
                stream.close()
            except Exception:
                pass
        try:
            self._container.remove(force=True)
        except docker.errors.NotFound:
            pass
        finally:
            _rmtree(self._scratch)


class DockerBackend:
    kind = "docker"

    def __init__(self) -> None:
        import docker

        self._client = docker.from_env(version="auto", timeout=60)

    def close(self) -> None:
        self._client.close()

    def _image_user(self, image: str) -> str:
        import docker.errors

        try:
            img = self._client.images.get(image)
        except docker.errors.ImageNotFound as exc:
            raise ImageMissing(f'Failed to pull image "{image}": rpc error: code = NotFound'
                               f' desc = failed to pull and unpack image "{image}":'
                               f" not found (the stand-in has no registry)") from exc
        return str(img.attrs.get("Config", {}).get("User") or "")

    def run(self, req: ContainerRequest) -> DockerBox:
        import docker.errors

        image_user = self._image_user(req.image)
        user = req.user or image_user
        if req.run_as_non_root:
            # kubelet's check: the effective user must be provably non-root.
            name = user.split(":")[0]
            if not name or name in ("0", "root"):
                raise ContainerConfigError("container has runAsNonRoot and image will run as root")
            if not name.isdigit():
                raise ContainerConfigError(
                    f"container has runAsNonRoot and image has non-numeric user ({name}),"
                    " cannot verify user is non-root")
        kwargs: dict[str, Any] = dict(
            image=req.image,
            environment=dict(req.env),
            labels={**req.labels, "plugbay.standin.pod": req.pod_key},
            ports={f"{p}/tcp": ("127.0.0.1", None) for p in req.ports},
            detach=True,
            read_only=req.read_only,
            cap_drop=list(req.cap_drop) or None,
            security_opt=["no-new-privileges"] if req.no_new_privileges else None,
        )
        # emptyDir: a fresh world-writable host folder, bind-mounted (a tmpfs or a
        # volume would copy up the image folder's owner and mode; emptyDir does not)
        scratch = tempfile.mkdtemp(prefix="plugbay-standin-emptydir-") if req.writable_dirs else None
        if scratch:
            binds = {}
            for i, target in enumerate(req.writable_dirs):
                source = os.path.join(scratch, str(i))
                os.mkdir(source)
                os.chmod(source, 0o1777)
                binds[source] = {"bind": target, "mode": "rw"}
            kwargs["volumes"] = binds
        if req.command:
            kwargs["entrypoint"] = list(req.command)
        if req.args:
            kwargs["command"] = list(req.args)
        if req.working_dir:
            kwargs["working_dir"] = req.working_dir
        if req.user:
            kwargs["user"] = req.user
        if req.memory_bytes:
            kwargs["mem_limit"] = req.memory_bytes
            kwargs["memswap_limit"] = req.memory_bytes
        if req.nano_cpus:
            kwargs["nano_cpus"] = req.nano_cpus
        try:
            container = self._client.containers.create(**kwargs)
        except docker.errors.ImageNotFound as exc:
            _rmtree(scratch)
            raise ImageMissing(str(exc)) from exc
        except BaseException:
            _rmtree(scratch)  # any other refusal must not leave the emptyDir folders behind
            raise
        try:
            container.start()
        except docker.errors.APIError as exc:
            try:
                container.remove(force=True)
            finally:
                _rmtree(scratch)
            raise ContainerConfigError(f"failed to start container: {exc.explanation}") from exc
        return DockerBox(self._client, container, req.ports, scratch)


# --- local process (when no engine is up) --------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessBox:
    kind = "process"

    def __init__(self, proc: subprocess.Popen[bytes], log_path: str, workdir: str,
                 published: dict[int, int]) -> None:
        self._proc = proc
        self._log_path = log_path
        self._workdir = workdir
        self.id = f"pid-{proc.pid}"
        self.published = published
        self._started = _now()
        self._finished: str | None = None
        self._closed = threading.Event()
        self._pumped = threading.Event()  # the process's output is all in the log file
        self._pump = threading.Thread(target=self._stamp_lines, name="plugbay-standin-logpump", daemon=True)
        self._pump.start()

    def _stamp_lines(self) -> None:
        """Copy the process's output to the log file, each line stamped when it came (the kubelet's way)."""
        assert self._proc.stdout is not None
        try:
            with open(self._log_path, "ab") as log:
                for line in iter(self._proc.stdout.readline, b""):
                    log.write(stamp_now() + b" " + line)
                    log.flush()
        finally:
            self._proc.stdout.close()
            self._pumped.set()

    def state(self) -> BoxState:
        code = self._proc.poll()
        if code is None:
            return BoxState(running=True, started_at=self._started)
        if self._finished is None:
            self._finished = _now()
        # a signal death looks like 128+signal, as in a container
        return BoxState(running=False, exit_code=code if code >= 0 else 128 - code,
                        started_at=self._started, finished_at=self._finished)

    def logs(self, follow: bool, tail: int | None) -> Iterator[bytes]:
        with open(self._log_path, "rb") as f:
            data = f.read()
            if tail is not None:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-tail:]) if tail else b""
            if data:
                yield data
            while follow and not self._closed.is_set():
                chunk = f.read(65536)
                if chunk:
                    yield chunk
                    continue
                if self._proc.poll() is not None:
                    self._pumped.wait(1.0)  # a child holding the pipe keeps it open: not the log's end
                    rest = f.read()
                    if rest:
                        yield rest
                    return
                time.sleep(0.05)

    def restart(self) -> None:
        raise ContainerConfigError("the process backend does not restart containers")

    def stop(self, grace: float) -> None:
        if self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=max(grace, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def remove(self) -> None:
        self.stop(0)
        self._closed.set()
        self._pump.join(timeout=5)
        shutil.rmtree(self._workdir, ignore_errors=True)


class ProcessBackend:
    """Runs the pod's command as a local process: the stand-in's fallback without an engine.

    The image is not run (there is no engine); the container's ``command`` and
    ``args`` are. Each container port gets a free 127.0.0.1 port, and env values
    naming ``0.0.0.0:<containerPort>`` are rewritten to it, so a plugin that
    listens where PLUGBAY_LISTEN says is reachable where the stand-in forwards.
    """

    kind = "process"

    def close(self) -> None:
        pass

    def run(self, req: ContainerRequest) -> ProcessBox:
        argv = list(req.command or []) + list(req.args or [])
        if not argv:
            raise ContainerConfigError("the process backend needs the container's command")
        published = {p: _free_port() for p in req.ports}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for key, value in req.env.items():
            for port, host_port in published.items():
                value = value.replace(f"0.0.0.0:{port}", f"127.0.0.1:{host_port}")
            env[key] = value
        workdir = tempfile.mkdtemp(prefix="plugbay-standin-")
        log_path = os.path.join(workdir, "log")
        open(log_path, "wb").close()
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        # The process announces its host port (it cannot bind 4000 for every pod): forward that too.
        published.update({host_port: host_port for host_port in list(published.values())})
        return ProcessBox(proc, log_path, workdir, published)
