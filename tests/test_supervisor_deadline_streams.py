"""A stream opened inside a Supervisor's deadline() scope gets what is left of the scope as its deadline, as a
unary call does; it got the config's call_timeout, so a stream inside a 2 s scope could run for a minute. A
scope already spent opens no stream (the scope's CallTimeoutError, unsent). Sync and asyncio, through the
Supervisor's channel to the counter example plugin (a real process), whose grpc.health.v1 Watch stream sends
its status once and then nothing until the status changes: it ends only at its deadline."""

from __future__ import annotations

import asyncio
import sys
import time

import grpc
import pytest

from plugbay import AsyncSupervisor, CallTimeoutError, ClientConfig, Supervisor
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from tests.test_supervisor_broker import EXAMPLE, HANDSHAKE, PLUGIN_NAME, CounterPlugin

CALL_TIMEOUT = 60.0  # far past the scopes below: a stream given it instead is told apart at its opening
SCOPE = 2.0
WATCH = health_pb2.HealthCheckRequest(service="")


def _config() -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, name="counter",
                        cmd=[sys.executable, str(EXAMPLE / "plugin.py")], call_timeout=CALL_TIMEOUT)


def _ended_at_its_deadline(error: BaseException) -> None:
    assert isinstance(error, CallTimeoutError), repr(error)
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, repr(error)
    # said as the scope's running out, as a unary call's is: the scope stands in for timeout= and call_timeout
    text = str(error)
    assert "shared by this call's steps" in text and "deadline(seconds)" in text, text
    assert "Pass a larger timeout=" not in text and "call_timeout" not in text, text


def test_a_stream_inside_a_deadline_scope_gets_what_is_left_of_it(in_tmp: object) -> None:
    with Supervisor(_config(), health_interval=None) as sup:
        health = health_pb2_grpc.HealthStub(sup.channel)  # type: ignore[no-untyped-call]
        outside = health.Watch(WATCH)
        try:
            assert outside.time_remaining() > SCOPE * 2  # outside a scope: call_timeout, as before
        finally:
            outside.cancel()
        with sup.deadline(SCOPE) as scope:
            own = health.Watch(WATCH, timeout=SCOPE / 4)  # a timeout= of its own ends sooner: it holds
            try:
                assert own.time_remaining() <= SCOPE / 4
            finally:
                own.cancel()
            stream = health.Watch(WATCH)
            assert stream.time_remaining() <= SCOPE
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as ended:
                next(stream)  # nothing more comes: the stream ends at the scope's deadline
            _ended_at_its_deadline(ended.value)
            assert scope.ran_out_in == "call /grpc.health.v1.Health/Watch", scope.ran_out_in
        with sup.deadline(0.2) as spent:
            time.sleep(0.3)  # the scope runs out before the stream is opened
            with pytest.raises(CallTimeoutError) as refused:
                health.Watch(WATCH)
            assert refused.value.sent is False, refused.value
            assert spent.ran_out_in == "call /grpc.health.v1.Health/Watch", spent.ran_out_in
            assert "shared by this call's steps" in str(refused.value), str(refused.value)


async def _outside_a_scope_gets_call_timeout(health: health_pb2_grpc.HealthStub) -> None:
    # a coroutine of its own: the cancelled call and what refers to it go when it returns (held in main()'s
    # frame, with the tracebacks pytest.raises keeps there, grpc.aio's call kept its socket pair open past the run)
    outside = health.Watch(WATCH)
    try:
        assert outside.time_remaining() > SCOPE * 2
    finally:
        outside.cancel()


async def _inside_a_scope(sup: AsyncSupervisor, health: health_pb2_grpc.HealthStub) -> None:
    with sup.deadline(SCOPE) as scope:
        stream = health.Watch(WATCH)
        assert stream.time_remaining() <= SCOPE
        assert (await stream.read()).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as ended:
            await stream.read()
        _ended_at_its_deadline(ended.value)
        assert scope.ran_out_in == "call /grpc.health.v1.Health/Watch", scope.ran_out_in
        del ended, stream  # the traceback's frame is this one: no cycle left holding the call


async def _scope_spent(sup: AsyncSupervisor, health: health_pb2_grpc.HealthStub) -> None:
    with sup.deadline(0.2) as spent:
        await asyncio.sleep(0.3)
        with pytest.raises(CallTimeoutError) as refused:
            await health.Watch(WATCH).read()
        assert refused.value.sent is False, refused.value
        assert spent.ran_out_in == "call /grpc.health.v1.Health/Watch", spent.ran_out_in
        del refused


def test_an_asyncio_stream_inside_a_deadline_scope_gets_what_is_left_of_it(in_tmp: object) -> None:
    async def main() -> None:
        async with AsyncSupervisor(_config(), health_interval=None) as sup:
            health = health_pb2_grpc.HealthStub(sup.channel)  # type: ignore[no-untyped-call]
            await _outside_a_scope_gets_call_timeout(health)
            await _inside_a_scope(sup, health)
            await _scope_spent(sup, health)

    asyncio.run(asyncio.wait_for(main(), 120))  # hang detection only
