"""A small S3 client for the cache: the dozen S3 calls it makes, on aiohttp, signed by
botocore's SigV4 signer (as the ECR provider signs its calls).

Why not aiobotocore or obstore (measured in bench/s3_client_bench.py against versitygw; the
figures are in bench/README.md). GETs run at the same pace with all three. obstore uploads
fastest (median 169 MiB/s against 101 here) with the least memory and the lowest per-call
latency, but it opens its connections in Rust, where the egress policy cannot judge the
addresses a name resolves to at connect time (only a check at start, which DNS can defeat),
and its process died of SIGABRT at exit in about a quarter of the bench's runs. aiobotocore
runs on aiohttp, but its connector is replaced only by subclassing its HTTP session, its
calls cost 2-7x more (HEAD 4.6 ms against 2.0), and it cannot be installed with pullgate at
all (3.10.0 pins botocore < 1.43.118; pullgate requires >= 1.44.8). Here every connection is
made by the aiohttp connector the caller gives (the egress-guarded one in production, as for
registries), bodies stream in the caller's chunk sizes, nothing is buffered but the parts
being sent, and no dependency is added.

Requests are path-style (`<endpoint>/<bucket>/<key>`), which every S3-compatible server
speaks. Over https, payloads are sent `UNSIGNED-PAYLOAD` (TLS protects them, and a second
SHA-256 of every part would double the cache's hashing); over plain http the signature
covers each body's SHA-256 (hashed off the event loop), so bytes altered on the way are
refused by the server. The secret key lives only in the botocore Credentials object: never
in an exception, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote, urlsplit
from xml.etree.ElementTree import Element

import aiohttp
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from defusedxml.ElementTree import fromstring
from yarl import URL

from proxy.egress import Refusal

log = logging.getLogger("pullgate.cache.s3")

UNSIGNED = "UNSIGNED-PAYLOAD"
# Calls that are safe to send twice (an UploadPart replaces its part; a second
# CreateMultipartUpload or CompleteMultipartUpload would not be).
RETRIED = frozenset(
    {
        "HeadObject",
        "GetObject",
        "PutObject",
        "DeleteObject",
        "ListObjectsV2",
        "HeadBucket",
        "UploadPart",
        "AbortMultipartUpload",
        "ListMultipartUploads",
    }
)
RETRIES = 2
BACKOFF = (0.1, 0.5)
RETRY_STATUSES = frozenset({500, 502, 503, 504})
MAX_XML = 16 * 1024 * 1024  # a ListObjectsV2 page of 1000 keys is ~300 KiB


class _PayloadAuth(S3SigV4Auth):
    """botocore would hash the body it is given (none here: it goes past the signer); the
    payload's hash is the one computed beforehand, or UNSIGNED-PAYLOAD."""

    def __init__(self, credentials: Credentials, region: str, payload_hash: str) -> None:
        super().__init__(credentials, "s3", region)
        self._payload_hash = payload_hash

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash


class S3Error(Exception):
    """An S3 call failed: `status` (HTTP, 0 for no answer) and S3's error `code`. The message
    names the operation and the code, never a URL (a presigned one carries a signature)."""

    def __init__(self, op: str, status: int, code: str, refusal: Refusal | None = None) -> None:
        super().__init__(f"S3 {op}: {code or 'error'} (HTTP {status})" if status else f"S3 {op}: {code}")
        self.op = op
        self.status = status
        self.code = code
        self.refusal = refusal  # set when the egress policy refused the endpoint


class S3NotFound(S3Error):
    pass


@dataclass(frozen=True)
class S3Endpoint:
    url: str  # scheme://host[:port], no path
    region: str
    bucket: str
    access_key_id: str
    secret_access_key: str = field(repr=False)


ConnectorFactory = Callable[[], aiohttp.BaseConnector]


def _q(value: str) -> str:
    return quote(value, safe="-_.~")


def _query(params: dict[str, str]) -> str:
    # Sorted and RFC 3986-encoded: sent exactly as signed.
    return "&".join(f"{_q(k)}={_q(v)}" if v else _q(k) for k, v in sorted(params.items()))


def _text(el: Element, name: str) -> str:
    for child in el:
        if child.tag.rsplit("}", 1)[-1] == name:
            return child.text or ""
    return ""


def _children(el: Element, name: str) -> list[Element]:
    return [c for c in el if c.tag.rsplit("}", 1)[-1] == name]


class S3Client:
    def __init__(
        self,
        endpoint: S3Endpoint,
        connector: ConnectorFactory,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        read_bufsize: int = 1 << 20,
    ) -> None:
        parts = urlsplit(endpoint.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            raise ValueError("S3 endpoint must be http(s)://host[:port] without a path")
        self.endpoint = endpoint
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._creds = Credentials(endpoint.access_key_id, endpoint.secret_access_key)
        self._connector = connector
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._bufsize = read_bufsize
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made in the running loop, on first use
            self._session = aiohttp.ClientSession(
                connector=self._connector(),
                timeout=self._timeout,
                auto_decompress=False,
                read_bufsize=self._bufsize,
                trust_env=False,
                skip_auto_headers=("User-Agent", "Content-Type"),
                headers={"User-Agent": "pullgate"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, key: str = "", params: dict[str, str] | None = None) -> str:
        path = f"/{self.endpoint.bucket}" + (f"/{quote(key, safe='/-_.~')}" if key else "/")
        return f"{self._base}{path}" + (f"?{_query(params)}" if params else "")

    def _signed(
        self, method: str, url: str, headers: dict[str, str] | None = None, payload_hash: str = UNSIGNED
    ) -> dict[str, str]:
        req = AWSRequest(method=method, url=url, headers=headers or {})
        _PayloadAuth(self._creds, self.endpoint.region, payload_hash).add_auth(req)
        return dict(req.headers.items())

    @asynccontextmanager
    async def request(
        self,
        op: str,
        method: str,
        key: str = "",
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | bytearray | None = None,
        ok: Sequence[int] = (200,),
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One signed request; a status not in `ok` becomes S3Error (S3NotFound for 404).

        An idempotent call (RETRIED) is tried again after a dropped connection or a 5xx
        (S3's 503 SlowDown included), up to RETRIES times with a short backoff, as the AWS
        SDKs do; a timeout is not retried (it has already cost its full wait)."""
        url = self.url(key, params)
        payload_hash = UNSIGNED
        if not self._base.startswith("https://"):
            body = data or b""
            payload_hash = await asyncio.to_thread(_sha256, body) if len(body) > 65536 else _sha256(body)
        tries = RETRIES + 1 if op in RETRIED else 1
        async with contextlib.AsyncExitStack() as stack:
            for attempt in range(tries):
                last = attempt == tries - 1
                signed = self._signed(method, url, headers, payload_hash)  # a fresh date each try
                try:
                    resp = await stack.enter_async_context(
                        self._http().request(method, URL(url, encoded=True), headers=signed, data=data)
                    )
                except aiohttp.ClientError as exc:
                    if last or not _transient(exc):
                        raise self._failure(op, exc) from None
                    await asyncio.sleep(BACKOFF[attempt])
                    continue
                if resp.status in RETRY_STATUSES and not last:
                    await stack.aclose()  # this answer is dropped; its connection with it
                    await asyncio.sleep(BACKOFF[attempt])
                    continue
                break
            if resp.status not in ok:
                code = await _error_code(resp)
                raise (S3NotFound if resp.status == 404 else S3Error)(op, resp.status, code)
            try:
                yield resp
            except aiohttp.ClientError as exc:  # the body broke off after the headers
                raise self._failure(op, exc) from None

    def _failure(self, op: str, exc: aiohttp.ClientError) -> S3Error:
        """The S3Error for a call that got no answer. The exception's own text may carry the
        URL: only its kind goes on."""
        refusal = getattr(exc, "refusal", None)  # the guarded connector's EgressDenied
        if isinstance(refusal, Refusal):
            # For the operator: which rule, and where to allow it (the endpoint is theirs).
            log.warning(
                "S3 cache: the bucket's endpoint %s was refused by the egress policy: %s; rule %s; %s",
                self._base,
                refusal.reason,
                refusal.rule,
                refusal.advice(),
            )
            return S3Error(op, 0, "EgressDenied", refusal)
        return S3Error(op, 0, type(exc).__name__)

    async def _xml(self, resp: aiohttp.ClientResponse, op: str) -> Element:
        body = await _read_upto(resp, MAX_XML)
        if body is None:
            raise S3Error(op, resp.status, "ResponseTooLarge")
        try:
            root: Element = fromstring(body)
        except Exception:
            raise S3Error(op, resp.status, "MalformedXML") from None
        if root.tag.rsplit("}", 1)[-1] == "Error":  # CompleteMultipartUpload can fail inside a 200
            raise S3Error(op, resp.status, _text(root, "Code"))
        return root

    # --- objects ----------------------------------------------------------------------------

    async def head(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            async with self.request("HeadObject", "HEAD", key) as resp:
                return int(resp.headers["Content-Length"])
        except S3NotFound:
            return None

    @asynccontextmanager
    async def get(self, key: str, rng: tuple[int, int] | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """The object's body as a response to stream from; `rng` is [start, end) in bytes."""
        headers = {"Range": f"bytes={rng[0]}-{rng[1] - 1}"} if rng else None
        # A ranged GET must answer 206: a server that ignored the Range would hand over bytes
        # from the wrong offset.
        async with self.request("GetObject", "GET", key, headers=headers, ok=(206,) if rng else (200,)) as resp:
            yield resp

    async def put(self, key: str, data: bytes) -> None:
        async with self.request("PutObject", "PUT", key, data=data):
            pass

    async def delete(self, key: str) -> None:
        async with self.request("DeleteObject", "DELETE", key, ok=(200, 204)):
            pass

    async def list_objects(self, prefix: str) -> AsyncIterator[tuple[str, int, float]]:
        """(key, size, last modified) of every object under `prefix`, page by page (ListObjectsV2)."""
        token = ""
        while True:
            params = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                params["continuation-token"] = token
            async with self.request("ListObjectsV2", "GET", params=params) as resp:
                root = await self._xml(resp, "ListObjectsV2")
            for item in _children(root, "Contents"):
                modified = parse_s3_time(_text(item, "LastModified")) or 0.0
                yield _text(item, "Key"), int(_text(item, "Size") or 0), modified
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true" or not token:
                return

    def presign_get(self, key: str, expires: int) -> str:
        """A GET URL valid for `expires` seconds, signed in the query (no network)."""
        req = AWSRequest(method="GET", url=self.url(key))
        S3SigV4QueryAuth(self._creds, "s3", self.endpoint.region, expires=expires).add_auth(req)
        return str(req.url)

    async def bucket_reachable(self) -> None:
        """HeadBucket: raises S3Error when the bucket cannot be reached with these credentials."""
        async with self.request("HeadBucket", "HEAD"):
            pass

    # --- multipart uploads ------------------------------------------------------------------

    async def create_multipart(self, key: str) -> str:
        async with self.request("CreateMultipartUpload", "POST", key, params={"uploads": ""}) as resp:
            upload_id = _text(await self._xml(resp, "CreateMultipartUpload"), "UploadId")
        if not upload_id:
            raise S3Error("CreateMultipartUpload", 200, "NoUploadId")
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes | bytearray) -> str:
        params = {"partNumber": str(number), "uploadId": upload_id}
        async with self.request("UploadPart", "PUT", key, params=params, data=body) as resp:
            return resp.headers.get("ETag", "")

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> None:
        body = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>" for n, etag in sorted(parts)
        )
        xml = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()
        async with self.request(
            "CompleteMultipartUpload", "POST", key, params={"uploadId": upload_id}, data=xml
        ) as resp:
            await self._xml(resp, "CompleteMultipartUpload")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            async with self.request(
                "AbortMultipartUpload", "DELETE", key, params={"uploadId": upload_id}, ok=(200, 204)
            ):
                pass
        except S3NotFound:
            pass  # already gone

    async def list_uploads(self, prefix: str) -> list[tuple[str, str, float | None]]:
        """(key, upload id, initiated) of the uploads begun and neither completed nor aborted, under `prefix`
        (first 1000: enough to sweep a crash's leftovers at start, again at the next)."""
        async with self.request("ListMultipartUploads", "GET", params={"uploads": "", "prefix": prefix}) as resp:
            root = await self._xml(resp, "ListMultipartUploads")
        return [
            (_text(u, "Key"), _text(u, "UploadId"), parse_s3_time(_text(u, "Initiated")))
            for u in _children(root, "Upload")
        ]


async def _read_upto(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is longer than `limit`."""
    buf = bytearray()
    while len(buf) <= limit:
        chunk = await resp.content.read(limit + 1 - len(buf))
        if not chunk:
            return bytes(buf)
        buf += chunk
    return None


def parse_s3_time(text: str) -> float | None:
    """S3's ISO 8601 timestamps (2026-12-02T10:00:00.000Z) as epoch seconds."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _transient(exc: aiohttp.ClientError) -> bool:
    """A dropped or refused connection, worth one more try; not a timeout, not the egress policy."""
    return (
        isinstance(exc, aiohttp.ClientConnectionError)
        and not isinstance(exc, asyncio.TimeoutError)
        and getattr(exc, "refusal", None) is None
    )


def _sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


async def _error_code(resp: aiohttp.ClientResponse) -> str:
    """S3's error code from the body (HEAD has none: the status says it)."""
    if resp.method == "HEAD":
        return {404: "NotFound", 403: "Forbidden"}.get(resp.status, "")
    try:
        body = await _read_upto(resp, 64 * 1024)
        return _text(fromstring(body or b""), "Code")
    except Exception:
        return ""


def make_connector(limit: int = 32) -> aiohttp.TCPConnector:
    """A plain connector (tests and bench); production passes the egress-guarded one."""
    return aiohttp.TCPConnector(limit=limit, keepalive_timeout=30)


__all__ = ["ConnectorFactory", "S3Client", "S3Endpoint", "S3Error", "S3NotFound", "make_connector"]
