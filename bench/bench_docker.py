"""The Docker rows: plugins as containers (DockerRunner), next to a bare `docker run`.

``docker run --rm --network none --entrypoint true IMAGE`` in the same run is
the floor: what the engine alone costs to create, start and remove a container
from that image. The plugin rows add the plugin's own start, the handshake read
from the log stream and the first call; their unary latency shows what the
transport costs (unix socket in a bind mount vs a port published on 127.0.0.1
through docker-proxy).

A bare grpcio KV plugin (bench/floor_kv_plugin.py) in the same base image is the
floor of a Python plugin in a container: the last row alternates its starts with
the plugbay plugin's, so the difference is what plugbay itself adds in Docker.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Case, Context, Result, interleaved, paired_starts, python_host_round


def _engine_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        from plugbay.images import docker_client

        docker_client().close()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine
        return f"no Docker engine: {str(exc).splitlines()[0][:60]}"
    return None


def _image(ctx: Context, name: str) -> str | None:
    key = f"docker:image:{name}"
    if key not in ctx.cache:
        reason = ctx.cache.setdefault("docker:reason", _engine_reason())
        if reason:
            ctx.cache[key] = None
        else:
            try:
                from plugbay import images

                ctx.cache[key] = images.ensure_example(name, progress=lambda _line: None)
            except Exception as exc:  # noqa: BLE001 - a failed build is a skipped row
                ctx.cache[key] = None
                ctx.cache["docker:reason"] = f"image {name}: {str(exc).splitlines()[0][:60]}"
    value = ctx.cache[key]
    return value if isinstance(value, str) else None


_BARE_TAG = "plugbay-bench-floor-kv:latest"


def _bare_image(ctx: Context) -> str | None:
    """The bare grpcio KV plugin (no plugbay imported) in the same base image as the plugbay one."""
    key = "docker:image:bare"
    if key not in ctx.cache:
        ctx.cache[key] = None
        if _image(ctx, "kv") is not None:  # the engine is up and the base image builds
            bench = Path(__file__).resolve().parent
            try:
                from plugbay import images

                with tempfile.TemporaryDirectory(prefix="plugbay-bench-floor-") as tmp:
                    shutil.copy2(bench / "floor_kv_plugin.py", tmp)
                    shutil.copytree(bench.parent / "examples" / "kv" / "kvproto", Path(tmp) / "kvproto",
                                    ignore=shutil.ignore_patterns("__pycache__"))
                    images.build_plugin_image(_BARE_TAG, Path(tmp), ["python", "/plugin/floor_kv_plugin.py"],
                                              progress=lambda _line: None)
                ctx.cache[key] = _BARE_TAG
            except Exception as exc:  # noqa: BLE001 - a failed build is a skipped row
                ctx.cache["docker:reason"] = f"image {_BARE_TAG}: {str(exc).splitlines()[0][:60]}"
    value = ctx.cache[key]
    return value if isinstance(value, str) else None


def _run_true(image: str) -> float:
    """One ``docker run --rm --network none --entrypoint true IMAGE``, in ms."""
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "true", image],
                   check=True, timeout=120, capture_output=True)
    return (time.perf_counter() - started) * 1000


def _docker_run_true(ctx: Context) -> Result:
    image = _image(ctx, "kv")
    if image is None:
        return Result(skipped=str(ctx.cache.get("docker:reason")))
    times = [_run_true(image) for _ in range(max(ctx.rounds, ctx.starts))]  # start-only: every start counts
    return Result(start_to_first_call_ms=statistics.median(times), note="docker run --rm IMAGE true (floor)")


def _run_started(image: str, network: tuple[str, ...]) -> float:
    """One ``docker run -d ... --entrypoint sleep IMAGE 60`` (returns once started), in ms; removed untimed."""
    started = time.perf_counter()
    done = subprocess.run(["docker", "run", "-d", *network, "--entrypoint", "sleep", image, "60"],
                          check=True, timeout=120, capture_output=True, text=True)
    took = (time.perf_counter() - started) * 1000
    subprocess.run(["docker", "rm", "-f", done.stdout.strip()], check=True, timeout=120, capture_output=True)
    return took


def _docker_network_start(ctx: Context) -> Result:
    """The engine's own price, at start, of what the tcp transport asks: the isolated network and a port.

    ``docker run -d`` (it returns once the container runs) with plugbay's isolated network and a
    port published on 127.0.0.1, against the same with ``--network none`` taken between them (this
    row's floor): the difference is the engine's work for a user-defined bridge (the endpoint, the
    embedded DNS it sets up in the container, the port mapping and its proxy), which a tcp plugin
    row pays on top of what the unix one does. Removal is not timed (a plugin row's is not either).
    """
    image = _image(ctx, "kv")
    if image is None:
        return Result(skipped=str(ctx.cache.get("docker:reason")))
    from plugbay.runners.docker.engine import engine
    from plugbay.runners.docker.hardening import ISOLATED_NETWORK, ensure_network

    client = engine()
    try:
        network = ensure_network(client, ISOLATED_NETWORK)
    finally:
        client.close()
    times: list[float] = []
    floor_starts: list[float] = []
    for _ in range(max(ctx.rounds, ctx.starts)):
        floor_starts.append(_run_started(image, ("--network", "none")))
        times.append(_run_started(image, ("--network", network, "--publish", "127.0.0.1::4000")))
    result = Result(start_to_first_call_ms=statistics.median(times), floor_start_ms=statistics.median(floor_starts),
                    note="docker run -d: isolated network + port vs --network none (engine only)")
    paired_starts(result, times, floor_starts)
    return result


def _docker_round(ctx: Context, image: str, transport: str, automtls: bool, calls: int) -> Result:
    """Start ``image`` with a plugbay Client on a DockerRunner, then time ``calls`` KV calls."""
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import ClientConfig
    from plugbay.runners.docker import DockerRunner

    config: Any = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, auto_mtls=automtls,
                               runner=DockerRunner(image, transport=transport, writable_dirs=("/tmp", "/data")),
                               call_timeout=ctx.call_timeout)
    return python_host_round(config, calls)


def _plugin(ctx: Context, name: str, transport: str, automtls: bool) -> Result:
    image = _image(ctx, name) if name != "bare" else _bare_image(ctx)
    floor_image = _image(ctx, "kv")
    if image is None or floor_image is None:
        return Result(skipped=str(ctx.cache.get("docker:reason")))
    # a `docker run ... true` before each start: the ratio column's start is taken against those
    return interleaved(ctx, lambda calls: _docker_round(ctx, image, transport, automtls, calls),
                       lambda calls: Result(start_to_first_call_ms=_run_true(floor_image)))


def _plugin_vs_bare(ctx: Context) -> Result:
    image, bare = _image(ctx, "kv"), _bare_image(ctx)
    if image is None or bare is None:
        return Result(skipped=str(ctx.cache.get("docker:reason")))
    # a bare grpcio plugin's start before each plugbay start, on the same runner and image base
    result = interleaved(ctx, lambda calls: _docker_round(ctx, image, "unix", False, calls),
                         lambda calls: _docker_round(ctx, bare, "unix", False, calls))
    result.note = "alternating with the bare grpcio plugin's rounds"
    return result


def cases(ctx: Context) -> list[Case]:
    def row(name: str, transport: str, automtls: bool = False) -> Any:
        return lambda c: _plugin(c, name, transport, automtls)

    floor = "docker-true"
    return [
        Case("docker CLI", "none (true)", False, _docker_run_true, area="docker", transport="container", key=floor),
        Case("docker CLI", "none (sleep)", False, _docker_network_start, area="docker",
             transport="container, tcp 127.0.0.1", floor=floor),
        Case("Python", "Python (docker)", False, row("kv", "unix"), area="docker", transport="container, unix",
             floor=floor),
        Case("Python", "Python (docker)", False, row("kv", "tcp"), area="docker",
             transport="container, tcp 127.0.0.1", floor=floor),
        Case("Python", "Python (docker)", True, row("kv", "unix", True), area="docker",
             transport="container, unix", floor=floor),
        Case("Python", "Go (docker)", False, row("kv-go", "unix"), area="docker", transport="container, unix",
             floor=floor),
        Case("Python", "bare grpcio (docker)", False, row("bare", "unix"), area="docker",
             transport="container, unix", key="docker-bare", floor=floor),
        Case("Python", "Python (docker)", False, _plugin_vs_bare, area="docker", transport="container, unix",
             floor="docker-bare"),
    ]
