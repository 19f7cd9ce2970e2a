"""A network plugin's Discovery answer is its word: an answer listing hundreds of thousands of versions, or
naming a protocol a megabyte long, fails the RemoteClient's start with the typed error, in a message of a
few hundred characters, not one of megabytes.

The plugin is a real grpcio server on 127.0.0.1 serving health and the Discovery answer each test sets.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from plugbay import RemoteClient, RemoteConfig
from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc
from plugbay.errors import UnsupportedProtocolError, VersionMismatchError
from tests.net_util import HANDSHAKE, PLUGINS, serving_discovery

MANY = 200_000


class _Answer(discovery_pb2_grpc.DiscoveryServicer):
    def __init__(self) -> None:
        self.answer = discovery_pb2.DescribeResponse()

    def Describe(self, request: discovery_pb2.DescribeRequest, context: grpc.ServicerContext) -> object:
        return self.answer


@pytest.fixture()
def plugin() -> Iterator[tuple[str, _Answer]]:
    answer = _Answer()
    with serving_discovery(answer) as address:
        yield address, answer


def _start_error(address: str) -> BaseException:
    client = RemoteClient(RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE, plugins=PLUGINS,
                                       insecure=True, start_timeout=15.0, health_interval=0.2, name="kv-answers"))
    try:
        with pytest.raises(Exception) as caught:
            client.start()
        return caught.value
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_an_answer_of_very_many_versions_is_said_in_a_short_message(plugin: tuple[str, _Answer]) -> None:
    address, answer = plugin
    answer.answer = discovery_pb2.DescribeResponse(
        core_protocol=1, protocol="grpc",
        versions=[discovery_pb2.VersionedPluginSet(version=v) for v in range(1000, 1000 + MANY)])
    error = _start_error(address)
    assert isinstance(error, VersionMismatchError), error
    assert len(error.plugin_versions) == MANY  # the attribute is whole; only the message is cut
    said = str(error)
    assert len(said) < 1000, len(said)
    assert f"plugin supports [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013," \
           f" 1014, 1015, 1016, 1017, 1018, 1019, ... ({MANY - 20} more)]" in said


@pytest.mark.timeout(60)
def test_an_answer_naming_an_enormous_protocol_is_said_in_a_short_message(plugin: tuple[str, _Answer]) -> None:
    address, answer = plugin
    answer.answer = discovery_pb2.DescribeResponse(core_protocol=1, protocol="p" * 1_000_000,
                                                   versions=[discovery_pb2.VersionedPluginSet(version=1)])
    error = _start_error(address)
    assert isinstance(error, UnsupportedProtocolError), error
    assert len(str(error)) < 1000, len(str(error))
    assert "characters cut" in str(error)
