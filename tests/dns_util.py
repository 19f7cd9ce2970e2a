"""A real DNS server (dnslib) on 127.0.0.1 whose zone the test sets, for the discovery tests.

No query leaves loopback: the resolvers under test get ``dns_server=`` the address
:func:`serving` yields.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

ZONE = "plugbay.test."


class Zone(BaseResolver):  # type: ignore[misc]
    """A mutable zone: records per (name, type); a name it never heard of is NXDOMAIN. ``rcode``, when
    set, answers every query with that response code instead."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[RR]] = {}
        self.rcode: int | None = None
        self.lock = threading.Lock()
        self.queries = 0

    def set(self, name: str, kind: str, rdatas: Sequence[object]) -> None:
        with self.lock:
            self.records[(name, kind)] = [RR(name, getattr(QTYPE, kind), rdata=r, ttl=1) for r in rdatas]

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        name, kind = str(request.q.qname), QTYPE[request.q.qtype]
        with self.lock:
            self.queries += 1
            if self.rcode is not None:
                reply.header.rcode = self.rcode
                return reply
            chain: list[RR] = []  # an alias is followed, as an authoritative server does within its zone
            while kind != "CNAME" and (name, kind) not in self.records and self.records.get((name, "CNAME")) \
                    and len(chain) < 8:
                chain.append(self.records[(name, "CNAME")][0])
                name = str(chain[-1].rdata.label)
            rrs = list(self.records.get((name, kind), []))
            known = any(n == name for n, _ in self.records)
        for rr in chain + rrs:
            reply.add_answer(rr)
        if not rrs and not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class _Handler(DNSHandler):  # type: ignore[misc]
    """dnslib's handler, but a UDP answer longer than ``udplen`` (0: none) goes out truncated as RFC 1035 has
    it: the question kept, the records dropped, TC set (dnslib's own truncate() drops the question too, and
    the client takes that for an answer to another query: it waits out its timeout). ``tcp_rcode``, when
    set, answers every query over TCP with that response code."""

    udplen = 0
    tcp_rcode: int | None = None

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        if self.protocol == "tcp" and self.tcp_rcode is not None:
            reply = request.reply()
            reply.header.rcode = self.tcp_rcode
            return bytes(reply.pack())
        reply = self.server.resolver.resolve(request, self)
        packed: bytes = reply.pack()
        if self.protocol == "udp" and self.udplen and len(packed) > self.udplen:
            reply.rr, reply.auth, reply.ar = [], [], []
            reply.header.tc = 1
            packed = reply.pack()
        return packed


@contextlib.contextmanager
def serving(zone: Zone, *, udplen: int = 0, tcp_rcode: int | None = None) -> Iterator[str]:
    """Serve ``zone`` on 127.0.0.1 (a free UDP port; no TCP unless ``tcp_rcode``); yields "127.0.0.1:PORT",
    stops it after. ``udplen``: UDP answers longer than this come truncated, as a server that keeps to DNS's
    512-byte datagrams sends them (the client asks again over TCP). ``tcp_rcode``: TCP is served on the UDP
    port number too, and answers every query with that response code (RCODE.SERVFAIL: a server that serves
    TCP but fails the query there)."""
    handler = type("Handler", (_Handler,), {"udplen": udplen, "tcp_rcode": tcp_rcode})
    logger = DNSLogger(logf=lambda s: None)
    servers = [DNSServer(zone, address="127.0.0.1", port=0, logger=logger, handler=handler)]
    port = servers[0].server.server_address[1]
    try:
        if tcp_rcode is not None:
            servers.append(DNSServer(zone, address="127.0.0.1", port=port, tcp=True, logger=logger, handler=handler))
    except BaseException:
        servers[0].server.server_close()
        raise
    threads = [threading.Thread(target=s.server.serve_forever, name="plugbay-test-dns", daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for server, thread in zip(servers, threads):
            server.server.shutdown()
            server.server.server_close()
            thread.join(10)


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A UDP socket on 127.0.0.1 that takes queries and never answers (a DNS server that is down or
    filtered: every query times out); yields "127.0.0.1:PORT", closes it after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
