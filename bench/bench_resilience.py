"""The resilience rows: what RetryPolicy + CircuitBreaker and a Supervisor add per call.

Python host -> Python KV plugin on the process runner, unix socket, as the core
row of the same name; the layers only wrap calls that succeed, so the
difference to that row is their overhead per call.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

from common import REPO, Case, Context, Result, combine, measure_kv

PY_PLUGIN = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]


def _config(cwd: str, ctx: Context) -> Any:
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import ClientConfig, ProcessRunner

    return ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, call_timeout=ctx.call_timeout,
                        runner=ProcessRunner(PY_PLUGIN, cwd=cwd))


def _plain(ctx: Context) -> Result:
    from kv_plugin_def import PLUGIN_NAME

    from plugbay import Client

    rounds = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        for _ in range(ctx.rounds):
            started = time.perf_counter()
            with Client(_config(cwd, ctx)) as client:
                rounds.append(measure_kv(client.dispense(PLUGIN_NAME), ctx.calls, started, "baseline"))
    return combine(rounds)


def _with_layers(ctx: Context) -> Result:
    from kv_plugin_def import PLUGIN_NAME

    from plugbay import CircuitBreaker, Client, RetryPolicy
    from plugbay import install

    rounds = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        for _ in range(ctx.rounds):
            started = time.perf_counter()
            with Client(_config(cwd, ctx)) as client:
                install(client, retry=RetryPolicy(methods=["Get"]), breaker=CircuitBreaker())
                rounds.append(measure_kv(client.dispense(PLUGIN_NAME), ctx.calls, started,
                                       "retry+breaker"))
    return combine(rounds)


def _supervised(ctx: Context) -> Result:
    from kv_plugin_def import PLUGIN_NAME

    from plugbay import RetryPolicy, Supervisor

    rounds = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        for _ in range(ctx.rounds):
            started = time.perf_counter()
            with Supervisor(lambda: _config(cwd, ctx), retry=RetryPolicy(methods=["Get"])) as sup:
                rounds.append(measure_kv(sup.dispense(PLUGIN_NAME), ctx.calls, started,
                                       "supervisor+retry+health"))
    return combine(rounds)


def cases(ctx: Context) -> list[Case]:
    return [
        Case("Python", "Python", False, _plain, area="resilience", transport="process, unix, plain Client"),
        Case("Python", "Python", False, _with_layers, area="resilience",
             transport="process, unix, retry+breaker"),
        Case("Python", "Python", False, _supervised, area="resilience",
             transport="process, unix, Supervisor"),
    ]
