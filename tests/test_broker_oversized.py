"""ConnInfo messages the broker keeps until a dial takes them are kept small: an announcement whose
network or address no socket can have is dropped as it arrives, a knock ack's error text is cut.
Otherwise a peer could make this side hold up to MAX_UNCLAIMED messages of up to 2 GiB each."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.wire import MAX_FIELD
from plugbay.errors import BrokerTimeoutError


@pytest.fixture
def broker() -> Iterator[GRPCBroker]:
    b = GRPCBroker(BrokerTransport(), "host")
    yield b
    b.close()


def test_an_announcement_longer_than_any_address_is_not_kept(broker: GRPCBroker,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    huge = "/" + "a" * (1 << 20)
    with caplog.at_level(logging.DEBUG, logger="plugbay.broker"):
        broker.receive(pb.ConnInfo(service_id=1, network="unix", address=huge))
        broker.receive(pb.ConnInfo(service_id=2, network="n" * (MAX_FIELD + 1), address="/x"))
        broker.receive(pb.ConnInfo(service_id=3, network="unix", address=huge))
    assert not broker._announced
    warned = [r for r in caplog.records if "dropping the announcement" in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING, logging.DEBUG, logging.DEBUG]  # no log flood
    with pytest.raises(BrokerTimeoutError):
        broker.dial(1, timeout=0.05)
    # a long but possible address (a host name near DNS's limit) is still kept
    fine = "h" * 253 + ":8080"
    broker.receive(pb.ConnInfo(service_id=4, network="tcp", address=fine))
    assert broker._announced[4][0].address == fine


def test_a_knock_acks_error_text_is_kept_cut(broker: GRPCBroker) -> None:
    broker.receive(pb.ConnInfo(service_id=5, address="/" + "a" * (1 << 20), knock=pb.ConnInfo.Knock(
        knock=True, ack=True, error="e" * (1 << 20))))
    kept = broker._acks[5][0]
    assert kept.knock.ack and kept.knock.error.startswith("e" * MAX_FIELD)
    assert len(kept.knock.error) < 2 * MAX_FIELD and not kept.address
    broker.receive(pb.ConnInfo(service_id=6, address="/" + "a" * (1 << 20), knock=pb.ConnInfo.Knock(
        knock=True, ack=True)))
    kept = broker._acks[6][0]
    assert kept.knock.ack and not kept.knock.error and not kept.address
