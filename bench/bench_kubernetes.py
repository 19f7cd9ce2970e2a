"""The Kubernetes rows: plugins as pods (KubernetesRunner) on the API stand-in (no cluster here).

Start-to-first-call is split in two: the stand-in's own container start (the
Docker engine's create + start of the pod's container, timed inside the
stand-in) and the rest, the runner's overhead: pod create, watch until Running,
the log stream carrying the handshake, the port-forward (or pod-IP) connect,
health check and the first Put. Unary latency shows what the port-forward
path (WebSocket through the API server) costs next to dialling the pod directly.
The stand-in runs in a process of its own (tests/kube_standin/separate.py), as
a kube-apiserver does: in this process it would share the bench's GIL.
"""

from __future__ import annotations

import statistics
from typing import Any

from common import Case, Context, Result, combine, python_host_round

WRITABLE = ("/tmp", "/data")


def _image(ctx: Context) -> str | None:
    if "kube:image" not in ctx.cache:
        try:
            from tests.kube_standin.images import kvtrap_image
            from tests.kube_standin.runtime import docker_available

            if not docker_available():
                ctx.cache["kube:reason"] = "no Docker engine for the stand-in's pods"
                ctx.cache["kube:image"] = None
            else:
                ctx.cache["kube:image"] = kvtrap_image()
        except Exception as exc:  # noqa: BLE001 - a failed build is a skipped row
            ctx.cache["kube:image"] = None
            ctx.cache["kube:reason"] = f"image: {str(exc).splitlines()[0][:60]}"
    value = ctx.cache["kube:image"]
    return value if isinstance(value, str) else None


def _pod_rows(ctx: Context, mode: str, automtls: bool) -> Result:
    image = _image(ctx)
    if image is None:
        return Result(skipped=str(ctx.cache.get("kube:reason")))
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import ClientConfig
    from plugbay.runners.kubernetes import KubernetesRunner
    from tests.kube_standin.separate import SeparateStandIn

    with SeparateStandIn(runtime="docker") as standin:
        rounds = []
        for _ in range(ctx.rounds):
            # the stand-in's pods are processes of this machine: their pod IP is 127.0.0.1
            runner = KubernetesRunner(image, kubeconfig=standin.kubeconfig, address_mode=mode,
                                      writable_dirs=WRITABLE, allow_loopback=True)
            config: Any = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, auto_mtls=automtls,
                                       runner=runner, call_timeout=ctx.call_timeout)
            rounds.append(python_host_round(config, ctx.calls))
    engine_ms = statistics.median(standin.container_start_seconds()) * 1000
    result = combine(rounds)
    overhead = result.start_to_first_call_ms - engine_ms
    result.note = (f"container start {engine_ms:.0f} ms + runner {overhead:.0f} ms"
                   + (f"; {result.note}" if result.note else ""))
    return result


def _container_start(ctx: Context) -> Result:
    """The stand-in's engine alone: create + start of a pod's container (median of the rounds)."""
    image = _image(ctx)
    if image is None:
        return Result(skipped=str(ctx.cache.get("kube:reason")))
    from plugbay import LaunchSpec
    from plugbay.runners.kubernetes import KubernetesRunner
    from tests.kube_standin.separate import SeparateStandIn

    with SeparateStandIn(runtime="docker") as standin:
        for _ in range(ctx.rounds):
            runner = KubernetesRunner(image, kubeconfig=standin.kubeconfig, writable_dirs=WRITABLE)
            runner.start(LaunchSpec(env={HANDSHAKE_KEY: HANDSHAKE_VALUE}))
            runner.kill(0)
    times = standin.container_start_seconds()
    return Result(start_to_first_call_ms=statistics.median(times) * 1000,
                  note="docker create+start inside the stand-in (the floor of the pod rows)")


HANDSHAKE_KEY, HANDSHAKE_VALUE = "BASIC_PLUGIN", "hello"


def cases(ctx: Context) -> list[Case]:
    def row(mode: str, automtls: bool = False) -> Any:
        return lambda c: _pod_rows(c, mode, automtls)

    return [
        Case("stand-in", "none (container start)", False, _container_start, area="kubernetes",
             transport="pod"),
        Case("Python", "Python (pod)", False, row("port-forward"), area="kubernetes",
             transport="pod, port-forward"),
        Case("Python", "Python (pod)", True, row("port-forward", True), area="kubernetes",
             transport="pod, port-forward"),
        Case("Python", "Python (pod)", False, row("in-cluster"), area="kubernetes",
             transport="pod, pod IP (127.0.0.1)"),
    ]
