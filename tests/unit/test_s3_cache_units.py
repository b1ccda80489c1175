"""The S3 cache backend's pure parts: key layout, part sizing, the cache.s3 section's
validation, signing that never shows the secret."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.cache.s3client import S3Client, S3Endpoint, S3Error, make_connector, parse_s3_time
from proxy.cache.s3store import (
    MAX_PART_SIZE,
    MAX_PARTS,
    PART_SIZE,
    S3Backend,
    digest_of_key,
    normalize_prefix,
    object_key,
    part_size_for,
)
from proxy.config import CacheS3Section, Config, ConfigError, validate_cache_s3

HEX = hashlib.sha256(b"x").hexdigest()
SECRET = "canary-unit-s3-secret-0123456789"
GiB = 1 << 30


def test_key_layout_matches_the_filesystem_layout_under_the_prefix() -> None:
    assert object_key("", f"sha256:{HEX}") == f"blobs/sha256/{HEX[:2]}/{HEX}"
    assert object_key("pg/cache/", f"sha256:{HEX}") == f"pg/cache/blobs/sha256/{HEX[:2]}/{HEX}"
    h512 = hashlib.sha512(b"x").hexdigest()
    assert object_key("", f"sha512:{h512}") == f"blobs/sha512/{h512[:2]}/{h512}"


@pytest.mark.parametrize(
    "digest",
    [
        f"sha256:{HEX.upper()}",
        f"sha256:{HEX[:-1]}",
        f"md5:{HEX[:32]}",
        "sha256:../../../../etc/passwd",
        f"sha256:{HEX[:-2]}/x",
        HEX,
        "",
    ],
)
def test_a_key_is_built_only_from_a_well_formed_digest(digest: str) -> None:
    with pytest.raises(ValueError):
        object_key("p/", digest)


def test_keys_map_back_to_digests_and_nothing_else_does() -> None:
    key = object_key("p/", f"sha256:{HEX}")
    assert digest_of_key("p/", key) == f"sha256:{HEX}"
    assert digest_of_key("q/", key) is None
    for other in (f"p/blobs/sha256/00/{HEX}", f"p/tmp/{HEX}", "p/blobs/sha256/ab", f"p/blobs/sha256/{HEX[:2]}/{HEX}.x"):
        assert digest_of_key("p/", other) is None


def test_prefix_is_normalized_to_one_trailing_slash() -> None:
    assert normalize_prefix("") == ""
    assert normalize_prefix("/") == ""
    assert normalize_prefix("a/b") == "a/b/"
    assert normalize_prefix("/a/b/") == "a/b/"


def test_parts_stay_within_s3s_limits_whatever_the_size() -> None:
    assert part_size_for(None) == PART_SIZE == 8 << 20
    assert part_size_for(1) == PART_SIZE
    assert part_size_for(PART_SIZE * MAX_PARTS) == PART_SIZE  # 78 GiB: 8 MiB parts still fit
    for size in (100 * GiB, 300 * GiB, 600 * GiB):
        part = part_size_for(size)
        assert PART_SIZE < part <= MAX_PART_SIZE and part % (1 << 20) == 0
        assert -(-size // part) <= MAX_PARTS
    assert part_size_for(10_000 * GiB) == MAX_PART_SIZE  # beyond S3's 5 TiB object: capped, the upload fails


def _valid(**changes: object) -> CacheS3Section:
    base = CacheS3Section(
        bucket="pullgate-cache",
        prefix="replicas/",
        endpoint_url="https://s3.eu-west-1.amazonaws.com",
        region="eu-west-1",
        access_key_id="AKIAEXAMPLE",
        secret_access_key_env="S3_SECRET",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_complete_section_is_valid() -> None:
    validate_cache_s3(_valid(), Config())
    validate_cache_s3(_valid(prefix="", secret_access_key_env=None, secret_access_key_file="/run/s3"), Config())
    validate_cache_s3(_valid(endpoint_url="http://minio.internal:9000"), Config())  # a name: judged at connect time


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"bucket": ""}, "cache.s3.bucket"),
        ({"bucket": "Upper"}, "cache.s3.bucket"),
        ({"bucket": "a"}, "cache.s3.bucket"),
        ({"bucket": "a..b"}, "cache.s3.bucket"),
        ({"prefix": "a/../b"}, "cache.s3.prefix"),
        ({"prefix": "a//b"}, "cache.s3.prefix"),
        ({"prefix": "a b"}, "cache.s3.prefix"),
        ({"prefix": "a?b"}, "cache.s3.prefix"),
        ({"region": "us east"}, "cache.s3.region"),
        ({"region": "evil.example/#"}, "cache.s3.region"),
        ({"access_key_id": ""}, "cache.s3.access_key_id"),
        ({"secret_access_key_env": None}, "cache.s3.secret_access_key_file"),
        ({"secret_access_key_file": "/run/s3"}, "cache.s3.secret_access_key_file"),
        ({"endpoint_url": "s3.amazonaws.com"}, "cache.s3.endpoint_url"),
        ({"endpoint_url": "ftp://s3.example"}, "cache.s3.endpoint_url"),
        ({"endpoint_url": "https://s3.example/bucket"}, "cache.s3.endpoint_url"),
        ({"endpoint_url": "https://s3.example?x=1"}, "cache.s3.endpoint_url"),
        ({"endpoint_url": "https://key:secret@s3.example"}, "cache.s3.endpoint_url"),
    ],
)
def test_a_bad_key_stops_the_start_naming_it(changes: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_cache_s3(_valid(**changes), Config())
    assert str(info.value).startswith(key + ":")


def test_a_literal_private_endpoint_needs_an_egress_allow_entry() -> None:
    cfg = Config()
    with pytest.raises(ConfigError, match=r"cache.s3.endpoint_url: 10.0.0.5:9000 is a private address.*egress_allow"):
        validate_cache_s3(_valid(endpoint_url="http://10.0.0.5:9000"), cfg)
    cfg.upstream.egress_allow = ["10.0.0.5:9000"]
    validate_cache_s3(_valid(endpoint_url="http://10.0.0.5:9000"), cfg)


def test_the_proxys_own_listener_is_never_an_endpoint() -> None:
    cfg = Config()
    cfg.admin.listen = "127.0.0.1:8081"
    cfg.upstream.egress_allow = ["127.0.0.0/8"]
    with pytest.raises(ConfigError, match=r"cache\.s3\.endpoint_url: 127\.0\.0\.1:8081"):
        validate_cache_s3(_valid(endpoint_url="http://127.0.0.1:8081"), cfg)


def _client() -> S3Client:
    ep = S3Endpoint("https://s3.example:8443", "eu-west-1", "bkt", "AKIAEXAMPLE", SECRET)
    return S3Client(ep, make_connector)


def test_a_presigned_get_is_signed_v4_for_the_asked_time_and_carries_no_secret() -> None:
    url = _client().presign_get(f"blobs/sha256/{HEX[:2]}/{HEX}", 60)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"https://s3.example:8443/bkt/blobs/sha256/{HEX[:2]}/{HEX}"
    q = parse_qs(parts.query)
    assert q["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert q["X-Amz-Expires"] == ["60"]
    assert q["X-Amz-Credential"][0].startswith("AKIAEXAMPLE/")
    assert SECRET not in url


def test_signed_headers_and_reprs_never_show_the_secret() -> None:
    c = _client()
    headers = c._signed("PUT", c.url("k", {"partNumber": "1", "uploadId": "a/b+c="}))
    assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
    assert SECRET not in repr(headers) and SECRET not in repr(c.endpoint)
    assert c.url("k", {"uploadId": "a/b+c=", "partNumber": "1"}).endswith("/bkt/k?partNumber=1&uploadId=a%2Fb%2Bc%3D")


def test_errors_name_the_call_and_code_never_a_url() -> None:
    err = S3Error("GetObject", 403, "SignatureDoesNotMatch")
    assert str(err) == "S3 GetObject: SignatureDoesNotMatch (HTTP 403)"


def test_an_endpoint_with_a_path_is_refused() -> None:
    with pytest.raises(ValueError):
        S3Client(S3Endpoint("https://s3.example/bkt", "r", "b", "k", SECRET), make_connector)


def test_s3_timestamps() -> None:
    assert parse_s3_time("1970-01-01T00:01:00.000Z") == 60.0
    assert parse_s3_time("garbage") is None


def test_the_backend_reads_its_secret_by_reference(tmp_path: Path) -> None:
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text(SECRET + "\n")
    section = _valid(secret_access_key_env=None, secret_access_key_file=str(secret_file), prefix="/a/b")
    b = S3Backend.from_config(section, tmp_path / "spool", make_connector)
    assert b.client.endpoint.secret_access_key == SECRET
    assert b.prefix == "a/b/" and b.key(f"sha256:{HEX}").startswith("a/b/blobs/sha256/")
    assert SECRET not in repr(b.client.endpoint)
    missing = _valid(secret_access_key_env="PULLGATE_TEST_NO_SUCH_VARIABLE")
    with pytest.raises(ConfigError, match=r"cache\.s3\.secret_access_key_env: environment variable"):
        S3Backend.from_config(missing, tmp_path / "spool", make_connector)
