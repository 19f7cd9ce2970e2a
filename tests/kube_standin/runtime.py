"""How the stand-in really runs a pod's container: the types its backends share, and the Docker backend.

Each backend returns a :class:`Box` the pod store polls for the container's
real state (running, exit code, OOM kill) and reads logs from. Container ports
are published on 127.0.0.1 only; the stand-in forwards port-forward streams to
``127.0.0.1:<published>`` and never dials a bridge address. Without an engine
the pods run as local processes instead (process_backend.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .orphans import _EMPTYDIR_PREFIX, EMPTYDIR_LABEL, _pod_labels, owner_labels, remove_orphans


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
    def logs(self, follow: bool, tail: int | None) -> Generator[bytes, None, None]:
        """The log with each line stamped (RFC3339Nano and a space), as the kubelet keeps it."""
        ...

    def restart(self) -> None: ...
    def stop(self, grace: float) -> None: ...
    def remove(self) -> None: ...


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


def _close_stream(stream: Any) -> None:
    """Close a docker-py log stream and its connection. CancellableStream.close() only shuts the socket
    and closes the socket object, whose descriptor stays open while the response's file holds it; the
    response is in a cycle (docker-py hangs it on that file), so only the garbage collector closed it."""
    try:
        stream.close()
    except Exception:
        pass
    response = getattr(stream, "_response", None)
    if response is not None:
        try:
            response.close()
        except Exception:
            pass


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

    def logs(self, follow: bool, tail: int | None) -> Generator[bytes, None, None]:
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
            _close_stream(stream)
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
        for stream in streams:  # shut only: the reading thread closes the response (logs() above)
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
        remove_orphans(self._client)

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
            labels={**_pod_labels(req.labels), "plugbay.standin.pod": req.pod_key, **owner_labels()},
            ports={f"{p}/tcp": ("127.0.0.1", None) for p in req.ports},
            detach=True,
            read_only=req.read_only,
            cap_drop=list(req.cap_drop) or None,
            security_opt=["no-new-privileges"] if req.no_new_privileges else None,
        )
        # emptyDir: a fresh world-writable host folder, bind-mounted (a tmpfs or a
        # volume would copy up the image folder's owner and mode; emptyDir does not)
        scratch = tempfile.mkdtemp(prefix=_EMPTYDIR_PREFIX) if req.writable_dirs else None
        if scratch:
            kwargs["labels"][EMPTYDIR_LABEL] = scratch
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
