"""The Kubernetes rows: plugins as pods (KubernetesRunner) on the API stand-in (no cluster here).

Start-to-first-call is split in two: the stand-in's own container start (the
Docker engine's create + start of the pod's container, timed inside the
stand-in) and the rest, the runner's overhead: pod create, watch until Running,
the log stream carrying the handshake, the port-forward (or pod-IP) connect,
health check and the first Put. Unary latency shows what the port-forward
path (WebSocket through the API server) costs next to dialling the pod directly:
the pod IP row is the plaintext port-forward row's floor, and the two are measured
together (_paired_rounds), so the machine's load drifting between rows does not
land in their ratio. The stand-in runs in a process of its own
(tests/kube_standin/separate.py), as a kube-apiserver does: in this process it
would share the bench's GIL.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from typing import Any

from common import Case, Context, Result, combine, pair_ratios, percentile, python_host_round, timed

WRITABLE = ("/tmp", "/data")
# Gets per client per turn in the paired rounds: small enough that both clients see the same
# moments of the machine's load, large enough that a turn is not dominated by switching
BLOCK = 50
FORWARD, POD_IP = "port-forward", "in-cluster"


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


def _config(ctx: Context, image: str, kubeconfig: str, mode: str, automtls: bool = False) -> Any:
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import ClientConfig
    from plugbay.runners.kubernetes import KubernetesRunner

    # the stand-in's pods are processes of this machine: their pod IP is 127.0.0.1
    runner = KubernetesRunner(image, kubeconfig=kubeconfig, address_mode=mode, writable_dirs=WRITABLE,
                              allow_loopback=True)
    return ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, auto_mtls=automtls, runner=runner,
                        call_timeout=ctx.call_timeout)


def _split(result: Result, engine_seconds: list[float]) -> Result:
    """Note the start's split: the stand-in's container start (median) and the runner's rest."""
    engine_ms = statistics.median(engine_seconds) * 1000
    overhead = result.start_to_first_call_ms - engine_ms
    result.note = (f"container start {engine_ms:.0f} ms + runner {overhead:.0f} ms"
                   + (f"; {result.note}" if result.note else ""))
    return result


def _pod_rows(ctx: Context, mode: str, automtls: bool) -> Result:
    """ctx.rounds starts of one client, each timing ctx.calls Gets, on a stand-in of its own."""
    image = _image(ctx)
    if image is None:
        return Result(skipped=str(ctx.cache.get("kube:reason")))
    from tests.kube_standin.separate import SeparateStandIn

    with SeparateStandIn(runtime="docker") as standin:
        rounds = [python_host_round(_config(ctx, image, standin.kubeconfig, mode, automtls), ctx.calls)
                  for _ in range(ctx.rounds)]
    return _split(combine(rounds), standin.container_start_seconds())


def _paired_round(ctx: Context, image: str, kubeconfig: str, order: tuple[str, ...]) -> dict[str, Result]:
    """Start a client per mode (in ``order``), both up, then their timed Gets alternate in blocks."""
    from kv_plugin_def import PLUGIN_NAME

    from plugbay import Client

    kvs: dict[str, Any] = {}
    firsts: dict[str, float] = {}
    notes: dict[str, str] = {}
    with ExitStack() as stack:
        for mode in order:
            started = time.perf_counter()
            client = stack.enter_context(Client(_config(ctx, image, kubeconfig, mode)))
            kvs[mode] = client.dispense(PLUGIN_NAME)
            kvs[mode].put("bench", b"value")
            firsts[mode] = (time.perf_counter() - started) * 1000
            notes[mode] = client.connection_mode
        latencies: dict[str, list[float]] = {mode: [] for mode in order}
        spent = dict.fromkeys(order, 0.0)
        for done in range(0, ctx.calls, BLOCK):
            for mode in order:
                got, took = timed(min(BLOCK, ctx.calls - done), lambda kv=kvs[mode]: kv.get("bench"))
                latencies[mode] += got
                spent[mode] += took
    out = {}
    for mode, values in latencies.items():
        values.sort()
        out[mode] = Result(firsts[mode], percentile(values, 0.50), percentile(values, 0.99), len(values),
                           len(values) / spent[mode] if spent[mode] else 0.0, note=notes[mode])
    return out


def _paired_rounds(ctx: Context) -> tuple[Result, Result] | str:
    """The plaintext port-forward and pod IP rows over the same moments (or why not): ctx.rounds rounds
    on one stand-in, each round a _paired_round, the two clients' order swapped every round."""
    image = _image(ctx)
    if image is None:
        return str(ctx.cache.get("kube:reason"))
    from tests.kube_standin.separate import SeparateStandIn

    rounds: dict[str, list[Result]] = {FORWARD: [], POD_IP: []}
    started: list[str] = []  # the modes in start order, which is the stand-in's container start order
    with SeparateStandIn(runtime="docker") as standin:
        for n in range(ctx.rounds):
            order = (FORWARD, POD_IP) if n % 2 == 0 else (POD_IP, FORWARD)
            for mode, result in _paired_round(ctx, image, standin.kubeconfig, order).items():
                rounds[mode].append(result)
            started += order
    engine = standin.container_start_seconds()
    # one container start per pod, in start order; a pod the stand-in restarted would shift them: all then
    own = {mode: ([s for m, s in zip(started, engine) if m == mode] if len(engine) == len(started) else [])
           or engine for mode in rounds}
    forward, pod_ip = rounds[FORWARD], rounds[POD_IP]
    row = _split(combine(forward, floor_starts=[r.start_to_first_call_ms for r in pod_ip], floor_rounds=pod_ip),
                 own[FORWARD])
    row.pair_ratios, row.pairs = pair_ratios(forward, pod_ip), len(pod_ip)
    row.note += f"; ratio column: against the pod IP client, up on the same stand-in, Gets alternating by {BLOCK}"
    floor = _split(combine(pod_ip), own[POD_IP])
    floor.note += "; measured with the port-forward row's rounds"
    return row, floor


def _paired(ctx: Context, mode: str) -> Result:
    """One of the two paired rows: the first to run measures both, the other takes its half."""
    if "kube:paired" not in ctx.cache:
        try:
            ctx.cache["kube:paired"] = _paired_rounds(ctx)
        except Exception as exc:
            ctx.cache["kube:paired"] = exc  # the other row fails the same way, without a second try
            raise
    got = ctx.cache["kube:paired"]
    if isinstance(got, Exception):
        raise got
    if isinstance(got, str):
        return Result(skipped=got)
    return got[0] if mode == FORWARD else got[1]


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
    pod_ip = "kube-pod-ip"
    # the pod IP row first: a row's ratio column needs its floor's row printed before it
    return [
        Case("stand-in", "none (container start)", False, _container_start, area="kubernetes",
             transport="pod"),
        Case("Python", "Python (pod)", False, lambda c: _paired(c, POD_IP), area="kubernetes",
             transport="pod, pod IP (127.0.0.1)", key=pod_ip),
        Case("Python", "Python (pod)", False, lambda c: _paired(c, FORWARD), area="kubernetes",
             transport="pod, port-forward", floor=pod_ip),
        Case("Python", "Python (pod)", True, lambda c: _pod_rows(c, FORWARD, True), area="kubernetes",
             transport="pod, port-forward"),
    ]
