"""A status a plugin's handler passed through from a nested call reads, at a plugbay host, as its answer.

The plugin's handler (trap_kv) calls a helper that is not there and lets the grpc.RpcError propagate: its
call fails with that code (as grpc-go passes a status error through). A plugbay host read a nested
DEADLINE_EXCEEDED as this call's timeout (CallTimeoutError, "Pass a larger timeout=") and a nested
UNAVAILABLE as a plugin that may have exited (it probed, then said the plugin may not have received the
call). The plugin now marks such a status (plugbay-handler-status), and the host passes it on as is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import CallTimeoutError, Client, ClientConfig, PlugbayError  # noqa: E402
from plugbay.core.protocol.handlerstatus import HANDLER_STATUS  # noqa: E402

TRAP = str(REPO / "tests" / "plugins" / "trap_kv.py")


@pytest.fixture(autouse=True)
def _in_tmp(in_tmp: None) -> None:
    """trap_kv's nested calls dial a socket in the working folder."""


@pytest.mark.parametrize(("key", "code"), [("__nested_deadline__", grpc.StatusCode.DEADLINE_EXCEEDED),
                                           ("__nested__", grpc.StatusCode.UNAVAILABLE)])
def test_a_handlers_nested_status_is_its_answer(key: str, code: grpc.StatusCode) -> None:
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin(None)},  # type: ignore[arg-type]
                             cmd=[sys.executable, TRAP], call_timeout=30.0, kill_grace=0.5)) as client:
        kv = client.dispense(PLUGIN_NAME)
        with pytest.raises(grpc.RpcError) as info:
            kv.get(key)
        error = info.value
        assert not isinstance(error, (CallTimeoutError, PlugbayError)), error  # no timeout, no exit judged
        assert error.code() == code, error
        assert (HANDLER_STATUS, "1") in tuple(error.trailing_metadata() or ())  # type: ignore[attr-defined]
        assert kv.get("__nap__") == b"rested"
