"""The sync context an ``async def`` handler is given on the plugin side (plugbay's AioContext,
core/transport/aiocontext.py) answers what grpc.aio code asks of its context: initial metadata sent whether
awaited or not, add_done_callback(), done(), cancelled(), and context.read()/write() refused saying what
to write instead. Real plugin process (tests/plugins/async_plugins.py kv), driven by a plugbay host."""

from __future__ import annotations

import grpc
import pytest
from pathlib import Path

from tests.test_async_servicers import PLUGIN_NAME, kv_client, kv_pb2  # also puts examples/kv on sys.path


def test_initial_metadata_is_sent_whether_a_coroutine_awaits_it_as_grpc_aio_code_does_or_not(tmp_path: Path) -> None:
    from kvproto import kv_pb2_grpc

    with kv_client(tmp_path) as client:
        client.dispense(PLUGIN_NAME)
        stub = kv_pb2_grpc.KVStub(client.channel)
        for key, sent in (("__initial_metadata__", "awaited"), ("__initial_metadata_unawaited__", "called")):
            answer, call = stub.Get.with_call(kv_pb2.GetRequest(key=key))
            assert answer.value == b"sent"
            assert ("x-sent", sent) in list(call.initial_metadata()), call.initial_metadata()
        # grpc.aio's context.read(), which the sync context has not: the call's error says what to do
        with pytest.raises(grpc.RpcError) as err:
            stub.Get(kv_pb2.GetRequest(key="__context_read__"))
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert "read it with `async for`" in str(err.value.details()), err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # and its context.write()
            stub.Get(kv_pb2.GetRequest(key="__context_write__"))
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert "write a server stream as an async generator" in str(err.value.details()), err.value.details()


def test_grpc_aios_context_checks_answer_on_the_sync_context(tmp_path: Path) -> None:
    from kvproto import kv_pb2_grpc

    with kv_client(tmp_path) as client:
        client.dispense(PLUGIN_NAME)
        stub = kv_pb2_grpc.KVStub(client.channel)
        answer = stub.Get(kv_pb2.GetRequest(key="__done_callback__"))  # the client's call_timeout guards a hang
        assert answer.value == b"a ServicerContext: True, done: False, cancelled: False", answer.value
        # add_done_callback's callback ran as that call ended, given the context, which was done by then
        seen = stub.Get(kv_pb2.GetRequest(key="__done_seen__"))  # the client's call_timeout guards a hang
        assert seen.value == b"callback got the context: True, done then: True", seen.value
