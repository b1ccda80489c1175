"""A tiny authoritative DNS server on loopback (dnslib), for custom-domain tests."""

from __future__ import annotations

from dnslib import QTYPE, RR, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from tests.support.procs import free_port


class _Resolver(BaseResolver):
    def __init__(self, owner: LoopbackDNS) -> None:
        self.owner = owner

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.owner.queries.append((name, qtype))
        if qtype == "A" and name in self.owner.a:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(self.owner.a[name]), ttl=1))
        elif qtype == "TXT" and name in self.owner.txt:
            for value in self.owner.txt[name]:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(value), ttl=1))
        elif name not in self.owner.a and name not in self.owner.txt:
            reply.header.rcode = 3  # NXDOMAIN
        return reply


class LoopbackDNS:
    def __init__(self) -> None:
        self.a: dict[str, str] = {}
        self.txt: dict[str, list[str]] = {}
        self.queries: list[tuple[str, str]] = []
        self.port = free_port()
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data")
        self.server = DNSServer(_Resolver(self), port=self.port, address="127.0.0.1", logger=quiet)
        self.server.start_thread()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()
