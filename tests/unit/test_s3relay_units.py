"""proxy.cache.s3relay's pure parts: the Host a presigned URL was signed for, the Range asked,
and the check that an answer is exactly the bytes asked for (status, length, range)."""

from __future__ import annotations

import asyncio
import http.client
import socket

import pytest

from proxy.cache import s3relay
from proxy.cache.s3relay import DirectSource, answer_ok, host_header, range_header
from proxy.egress import EgressPolicy, parse_allow


def headers(**values: str) -> http.client.HTTPMessage:
    msg = http.client.HTTPMessage()
    for name, value in values.items():
        msg[name.replace("_", "-")] = value
    return msg


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:7070/b/k?X-Amz-Signature=x", "127.0.0.1:7070"),
        ("https://S3.Example.com/b/k", "s3.example.com"),
        ("https://s3.example.com:443/b/k", "s3.example.com"),  # the default port: not signed
        ("http://s3.example.com:80/b/k", "s3.example.com"),
        ("https://s3.example.com:80/b/k", "s3.example.com:80"),
        ("http://[::1]:9000/b/k", "[::1]:9000"),
    ],
)
def test_host_header_is_the_signed_one(url: str, host: str) -> None:
    assert host_header(url) == host


def test_range_header() -> None:
    assert range_header(0, 100, 100) is None  # the whole object: a plain 200
    assert range_header(0, 99, 100) == "bytes=0-98"
    assert range_header(10, 90, 100) == "bytes=10-99"


def test_answer_ok_only_for_exactly_the_bytes_asked() -> None:
    assert answer_ok(200, headers(Content_Length="100"), 0, 100, 100)
    assert not answer_ok(206, headers(Content_Length="100"), 0, 100, 100)
    assert not answer_ok(200, headers(Content_Length="99"), 0, 100, 100)  # short: never a short 200
    assert not answer_ok(200, headers(), 0, 100, 100)  # no length
    assert not answer_ok(200, headers(Content_Length="100", Transfer_Encoding="chunked"), 0, 100, 100)
    assert not answer_ok(200, headers(Content_Length="100", Content_Encoding="gzip"), 0, 100, 100)
    ok = headers(Content_Length="10", Content_Range="bytes 5-14/100")
    assert answer_ok(206, ok, 5, 10, 100)
    assert not answer_ok(200, headers(Content_Length="10"), 5, 10, 100)  # the Range ignored
    assert not answer_ok(206, headers(Content_Length="10", Content_Range="bytes 0-9/100"), 5, 10, 100)
    assert not answer_ok(206, headers(Content_Length="10", Content_Range="bytes 5-14/101"), 5, 10, 100)


def test_the_source_keeps_its_url_out_of_repr() -> None:
    source = DirectSource("http://127.0.0.1:1/b/k?X-Amz-Signature=secret", 5, EgressPolicy())
    assert "secret" not in repr(source) and "X-Amz" not in repr(source)


def test_a_refused_address_is_refused_before_any_connection() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        source = DirectSource(f"http://127.0.0.1:{port}/b/k", 5, EgressPolicy(parse_allow([])))
        with pytest.raises(s3relay.Refused) as info:
            asyncio.run(s3relay.relay(source, 0, 5, 0, 1))
        assert info.value.refusal.rule == "loopback"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_an_endpoint_that_does_not_answer_is_unavailable_not_an_abort() -> None:
    """Nothing was sent to the client: the caller may stream the hit its own way."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # a port nobody listens on
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        source = DirectSource(f"http://127.0.0.1:{port}/b/k", 5, EgressPolicy(parse_allow(["127.0.0.0/8"])))
        with pytest.raises(s3relay.Unavailable):
            asyncio.run(s3relay.relay(source, 0, 5, ours.fileno(), 1))
        ours.send(b"!")  # the caller's socket is untouched
        assert theirs.recv(1) == b"!"
    finally:
        ours.close()
        theirs.close()
