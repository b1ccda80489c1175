"""Build images and push them over the plain Distribution HTTP API, so the bytes are exactly ours.

Layers are gzip streams (stored deflate blocks: valid gzip at memcpy speed) of deterministic
pseudo-random bytes; they are not tar archives, which is fine for clients that do not unpack.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import random
import re
import tarfile
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.registry import Registry

MiB = 1 << 20
CHUNK = MiB
IN_MEMORY_MAX = 16 * MiB  # synthetic layers above this are streamed, never held whole

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# kind -> (manifest, config, layer, index) media types
KINDS = {
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_INDEX),
    "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST),
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- blobs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """Content with its digest; `source()` yields the bytes afresh on each call."""

    digest: str
    size: int
    source: Callable[[], Iterable[bytes]] = field(repr=False, compare=False)
    diff_id: str | None = None  # sha256 of the uncompressed content, when known

    @classmethod
    def from_bytes(cls, data: bytes, diff_id: str | None = None) -> Blob:
        return cls(sha256_digest(data), len(data), lambda: [data], diff_id)

    @classmethod
    def from_file(cls, path: Path, digest: str | None = None, diff_id: str | None = None) -> Blob:
        def read() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        if digest is None:
            digest = _hash(read())[0]
        return cls(digest, path.stat().st_size, read, diff_id)

    @classmethod
    def from_stream(cls, factory: Callable[[], Iterable[bytes]], diff_id: str | None = None) -> Blob:
        """Two passes: hash now, stream again at upload time."""
        digest, size = _hash(factory())
        return cls(digest, size, factory, diff_id)

    def read(self) -> bytes:
        return b"".join(self.source())


def _hash(chunks: Iterable[bytes]) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for c in chunks:
        h.update(c)
        n += len(c)
    return "sha256:" + h.hexdigest(), n


def rootfs_layer() -> Blob:
    """A real gzip'd tar (unlike the synthetic layers), so containerd and podman can unpack it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            ("etc/pullgate-release", b"pulled through pullgate\n"),
            ("bin/hello", b"#!/bin/sh\necho hello\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 1704067200
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return Blob.from_bytes(gzip.compress(tar_bytes, mtime=0), diff_id=sha256_digest(tar_bytes))


def synthetic_bytes(size: int, seed: int | str) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes in 1 MiB chunks (per-chunk seeds: no O(size) state)."""
    for i, off in enumerate(range(0, size, CHUNK)):
        yield random.Random(f"{seed}:{i}").randbytes(min(CHUNK, size - off))


def gzip_stored(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A valid gzip stream with level 0 (stored) blocks: fast and deterministic (mtime 0)."""
    z = zlib.compressobj(0, zlib.DEFLATED, 31)
    for c in chunks:
        if out := z.compress(c):
            yield out
    yield z.flush()


def synthetic_layer(size: int, seed: int | str) -> Blob:
    """gzip of `size` pseudo-random bytes; the blob is a little larger than `size`."""
    diff_id = _hash(synthetic_bytes(size, seed))[0]
    if size <= IN_MEMORY_MAX:
        return Blob.from_bytes(b"".join(gzip_stored(synthetic_bytes(size, seed))), diff_id)
    return Blob.from_stream(lambda: gzip_stored(synthetic_bytes(size, seed)), diff_id)


def big_layer(size: int = 100 * MiB, seed: int | str = "big", cache_dir: Path | None = None) -> Blob:
    """A large synthetic layer; with `cache_dir`, generated once to a file and reused."""
    if cache_dir is None:
        return synthetic_layer(size, seed)
    path = Path(cache_dir) / f"layer-{size}-{seed}.gz"
    meta = path.with_suffix(".json")
    if not meta.exists():
        h_raw, h_gz = hashlib.sha256(), hashlib.sha256()
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:

            def raw() -> Iterator[bytes]:
                for c in synthetic_bytes(size, seed):
                    h_raw.update(c)
                    yield c

            for c in gzip_stored(raw()):
                h_gz.update(c)
                f.write(c)
        tmp.rename(path)
        digests = {"digest": h_gz.hexdigest(), "diff_id": h_raw.hexdigest()}
        meta.write_text(json.dumps({k: "sha256:" + v for k, v in digests.items()}))
    m = json.loads(meta.read_text())
    return Blob.from_file(path, m["digest"], m["diff_id"])


# -- pushing --------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class PushError(RuntimeError):
    pass


class Pusher:
    """Pushes blobs and manifests to one registry, answering Basic and Bearer challenges."""

    def __init__(
        self,
        base_url: str,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 120,
    ) -> None:
        u = urllib.parse.urlsplit(base_url)
        assert u.scheme == "http" and u.hostname == "127.0.0.1", "loopback http only"
        self.host, self.port = u.hostname, u.port or 80
        self.username, self.password = username, password
        self.timeout = timeout
        self._auth: dict[str, str] = {}  # repo (or "*" for Basic) -> Authorization value
        self.token_fetches = 0

    @classmethod
    def for_registry(cls, reg: Registry) -> Pusher:
        return cls(reg.url, reg.username, reg.password)

    def _raw(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: Blob | bytes | None = None,
    ) -> Response:
        u = urllib.parse.urlsplit(target)  # Location may be absolute: keep path and query
        path = u.path + (f"?{u.query}" if u.query else "")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            if body is None:
                conn.putheader("Content-Length", "0")
                conn.endheaders()
            elif isinstance(body, bytes):
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
            else:
                conn.putheader("Content-Length", str(body.size))
                conn.endheaders()
                for chunk in body.source():
                    conn.send(chunk)
            r = conn.getresponse()
            return Response(r.status, dict(r.getheaders()), r.read())
        finally:
            conn.close()

    def request(
        self,
        method: str,
        target: str,
        repo: str,
        headers: Mapping[str, str] | None = None,
        body: Blob | bytes | None = None,
    ) -> Response:
        """One request; on a 401, answer the challenge once and retry."""
        for attempt in range(2):
            h = dict(headers or {})
            if auth := self._auth.get(repo) or self._auth.get("*"):
                h["Authorization"] = auth
            r = self._raw(method, target, h, body)
            if r.status != 401 or attempt:
                return r
            self._answer(_header(r.headers, "WWW-Authenticate"), repo)
        raise AssertionError("unreachable")

    def _answer(self, challenge: str, repo: str) -> None:
        if self.username is None or self.password is None:
            raise PushError(f"registry wants auth ({challenge!r}) but no credentials given")
        basic = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            self._auth["*"] = basic
            return
        if scheme != "bearer":
            raise PushError(f"unknown challenge {challenge!r}")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = {"scope": f"repository:{repo}:pull,push"}
        if "service" in params:
            query["service"] = params["service"]
        url = params["realm"] + "?" + urllib.parse.urlencode(query)
        # Credentials only ever go to a loopback realm.
        assert url.startswith("http://127.0.0.1:"), url
        req = urllib.request.Request(url, headers={"Authorization": basic})  # noqa: S310
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
            data = json.load(resp)
        self.token_fetches += 1
        self._auth[repo] = "Bearer " + (data.get("token") or data["access_token"])

    def push_blob(self, repo: str, blob: Blob) -> None:
        """Monolithic upload (POST then PUT ?digest=), skipped if the blob is already there."""
        if self.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}", repo).status == 200:
            return
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo)
        if r.status != 202:
            raise PushError(f"POST upload {repo}: {r.status} {r.body[:500]!r}")
        loc = _header(r.headers, "Location")
        sep = "&" if "?" in loc else "?"
        target = loc + sep + urllib.parse.urlencode({"digest": blob.digest})
        headers = {"Content-Type": "application/octet-stream"}
        r = self.request("PUT", target, repo, headers, blob)
        if r.status != 201:
            raise PushError(f"PUT blob {repo}@{blob.digest}: {r.status} {r.body[:500]!r}")

    def push_manifest(self, repo: str, reference: str, media_type: str, body: bytes) -> str:
        r = self.request("PUT", f"/v2/{repo}/manifests/{reference}", repo, {"Content-Type": media_type}, body)
        if r.status != 201:
            raise PushError(f"PUT manifest {repo}:{reference}: {r.status} {r.body[:500]!r}")
        digest = sha256_digest(body)
        if _header(r.headers, "Docker-Content-Digest") != digest:
            raise PushError(f"registry computed another digest for {repo}:{reference}")
        return digest


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


# -- image builders -------------------------------------------------------------------------

LayerSpec = bytes | tuple[int, int | str] | Blob


@dataclass
class PushedImage:
    repo: str
    tag: str | None  # None for index children, pushed by digest only
    digest: str  # of `manifest`
    media_type: str
    manifest: bytes  # the exact bytes pushed
    blobs: list[tuple[str, int]]  # (digest, size): config first, then layers; [] for an index
    config_digest: str | None = None
    config: bytes | None = None
    layers: list[Blob] = field(default_factory=list)
    platform: str | None = None  # "linux/amd64" for images made for one platform
    children: list[PushedImage] = field(default_factory=list)  # for an index / manifest list
    tags: list[str] = field(default_factory=list)  # every tag pushed for this manifest

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def ref(self) -> str:
        """`repo:tag`, or `repo@digest` for untagged children."""
        return f"{self.repo}:{self.tag}" if self.tag else f"{self.repo}@{self.digest}"

    def all_blobs(self) -> list[tuple[str, int]]:
        """Blobs of this image and its children, without duplicates."""
        out = dict(self.blobs)
        for c in self.children:
            out.update(c.all_blobs())
        return list(out.items())

    def child(self, platform: str) -> PushedImage:
        return next(c for c in self.children if c.platform == platform)


def _pusher(target: Registry | Pusher) -> Pusher:
    return target if isinstance(target, Pusher) else Pusher.for_registry(target)


def _layer(spec: LayerSpec) -> Blob:
    if isinstance(spec, Blob):
        return spec
    if isinstance(spec, bytes):
        return Blob.from_bytes(spec)
    return synthetic_layer(*spec)


def _platform(platform: str) -> dict[str, str]:
    os_, arch, *variant = platform.split("/")
    return {"architecture": arch, "os": os_} | ({"variant": variant[0]} if variant else {})


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, indent=2).encode()


def image(
    target: Registry | Pusher,
    repo: str,
    tag: str | None,
    layers: Sequence[LayerSpec],
    platform: str = "linux/amd64",
    kind: str = "oci",
    extra_tags: Sequence[str] = (),
) -> PushedImage:
    """Push the layers, a config, then the manifest (`kind` "oci" or "docker" schema2)."""
    p = _pusher(target)
    manifest_type, config_type, layer_type, _ = KINDS[kind]
    blobs = [_layer(s) for s in layers]
    config = _dumps(
        _platform(platform)
        | {
            "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [b.diff_id or b.digest for b in blobs]},
        }
    )
    config_blob = Blob.from_bytes(config)
    for b in [config_blob, *blobs]:
        p.push_blob(repo, b)
    body = _dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_blob.digest, "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": b.digest, "size": b.size} for b in blobs],
        }
    )
    return _push_tagged(
        p,
        repo,
        tag,
        extra_tags,
        manifest_type,
        body,
        blobs=[(b.digest, b.size) for b in [config_blob, *blobs]],
        config_digest=config_blob.digest,
        config=config,
        layers=blobs,
        platform=platform,
    )


def index(
    target: Registry | Pusher,
    repo: str,
    tag: str | None,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
    kind: str = "oci",
    layer_size: int = 64 * 1024,
) -> PushedImage:
    """An OCI index or Docker manifest list whose children (one per platform) are pushed first."""
    p = _pusher(target)
    children = [image(p, repo, None, [(layer_size, f"{repo}:{kind}:{pf}")], pf, kind) for pf in platforms]
    index_type = KINDS[kind][3]
    body = _dumps(
        {
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [
                {
                    "mediaType": c.media_type,
                    "digest": c.digest,
                    "size": c.size,
                    "platform": _platform(c.platform or ""),
                }
                for c in children
            ],
        }
    )
    return _push_tagged(p, repo, tag, (), index_type, body, blobs=[], children=children)


def _push_tagged(
    p: Pusher,
    repo: str,
    tag: str | None,
    extra_tags: Sequence[str],
    media_type: str,
    body: bytes,
    **fields: object,
) -> PushedImage:
    tags = [t for t in [tag, *extra_tags] if t]
    digest = sha256_digest(body)
    for ref in tags or [digest]:
        p.push_manifest(repo, ref, media_type, body)
    return PushedImage(repo, tag, digest, media_type, body, tags=tags, **fields)  # type: ignore[arg-type]


def oci_image(
    target: Registry | Pusher,
    repo: str,
    tag: str | None,
    layers: Sequence[LayerSpec] = ((256 * 1024, 1),),
    platform: str = "linux/amd64",
    extra_tags: Sequence[str] = (),
) -> PushedImage:
    return image(target, repo, tag, layers, platform, "oci", extra_tags)


def docker_image(
    target: Registry | Pusher,
    repo: str,
    tag: str | None,
    layers: Sequence[LayerSpec] = ((256 * 1024, 2),),
    platform: str = "linux/amd64",
    extra_tags: Sequence[str] = (),
) -> PushedImage:
    return image(target, repo, tag, layers, platform, "docker", extra_tags)


def oci_index(target: Registry | Pusher, repo: str, tag: str | None) -> PushedImage:
    return index(target, repo, tag, kind="oci")


def docker_manifest_list(target: Registry | Pusher, repo: str, tag: str | None) -> PushedImage:
    return index(target, repo, tag, kind="docker")


def seed_standard_images(
    registry: Registry,
    repo_prefix: str = "vendor",
    big_layer_mib: int = 100,
    cache_dir: Path | None = None,
) -> dict[str, PushedImage]:
    """Push the standard set and store it as `registry.images`:

    oci        <prefix>/oci:v1 (also tagged v2..v5), OCI manifest, two small layers
    index      <prefix>/index:v1, OCI index of linux/amd64 + linux/arm64
    docker     <prefix>/docker:v1, Docker schema2
    dockerlist <prefix>/dockerlist:v1, Docker manifest list of amd64 + arm64
    big        <prefix>/big:v1, OCI manifest with one small and one `big_layer_mib` MiB layer
    """
    p = Pusher.for_registry(registry)
    pre = repo_prefix
    images = {
        "oci": oci_image(
            p,
            f"{pre}/oci",
            "v1",
            [b"pullgate small layer\n", (300 * 1024, "oci-1")],
            extra_tags=[f"v{i}" for i in range(2, 6)],
        ),
        "index": oci_index(p, f"{pre}/index", "v1"),
        "docker": docker_image(p, f"{pre}/docker", "v1", [(200 * 1024, "docker-1")]),
        "dockerlist": docker_manifest_list(p, f"{pre}/dockerlist", "v1"),
        "big": oci_image(
            p,
            f"{pre}/big",
            "v1",
            [(4096, "big-small"), big_layer(big_layer_mib * MiB, "big", cache_dir)],
        ),
    }
    registry.images = images
    return images
