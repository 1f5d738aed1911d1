"""`[storage.s3]` settings, the bucket's key layout and error classification (DESIGN §10): pure."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from promoter.errors import ConfigError, InvalidNameError
from promoter.s3errors import (
    ObjectNotFound,
    PreconditionFailed,
    S3ConfigError,
    StoreUnavailable,
    classify,
)
from promoter.s3layout import (
    MAX_PARTS,
    MIN_PART_BYTES,
    S3Settings,
    file_key,
    library_key,
    meta_key,
    part_size_for,
    probe_key,
    relpath_from_file_key,
    run_id_from_meta_key,
    tombstone_key,
)

GIB = 1024**3


def test_defaults_are_design_section_10() -> None:
    """The defaults are the ones DESIGN §10 prints."""
    s = S3Settings()
    assert (s.bucket, s.prefix, s.endpoint, s.region, s.allow_http) == (
        "promoter", "", "", "us-east-1", False)
    assert s.multipart_threshold_bytes == 67108864


def test_settings_are_frozen_and_strict() -> None:
    """Settings cannot change after load, and an unknown key (a credential, say) is refused."""
    s = S3Settings()
    with pytest.raises(ValidationError):
        s.bucket = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="secret_access_key"):
        S3Settings(secret_access_key="x")  # type: ignore[call-arg]


def test_plain_http_needs_allow_http() -> None:
    """An http:// endpoint is refused unless allow_http is true; https needs nothing."""
    with pytest.raises(ValidationError, match="allow_http"):
        S3Settings(endpoint="http://127.0.0.1:8333")
    assert S3Settings(endpoint="http://127.0.0.1:8333/", allow_http=True).endpoint == (
        "http://127.0.0.1:8333")
    assert S3Settings(endpoint="https://s3.example.com").endpoint == "https://s3.example.com"


@pytest.mark.parametrize("endpoint", ["ftp://h", "http://u:p@h", "https://h/path", "h:9000",
                                      "https://h?x=1"])
def test_bad_endpoints_refused(endpoint: str) -> None:
    """An endpoint is a scheme and a host[:port]: no user info, path or query."""
    with pytest.raises(ValidationError):
        S3Settings(endpoint=endpoint, allow_http=True)


@pytest.mark.parametrize("prefix", ["prod", "/prod/", "a//b/", "../", "a/../", "x\\y/", "a\n/"])
def test_bad_prefixes_refused(prefix: str) -> None:
    """A prefix ends in '/', has no empty, '.', '..' or odd components."""
    with pytest.raises(ValidationError):
        S3Settings(prefix=prefix)


@pytest.mark.parametrize("bucket", ["ab", "UPPER", "a_b", "-ab", "a..b", "x" * 64])
def test_bad_bucket_names_refused(bucket: str) -> None:
    """Bucket names follow S3's rules."""
    with pytest.raises(ValidationError):
        S3Settings(bucket=bucket)


@pytest.mark.parametrize("region", ["", "us-east-1\nX: y", "a b", "r" * 65])
def test_bad_regions_refused(region: str) -> None:
    """The region is signed into a header: only a plain name is taken."""
    with pytest.raises(ValidationError):
        S3Settings(region=region)


def test_threshold_bounds() -> None:
    """The multipart threshold is at least S3's 5 MiB part minimum, and at most 1 GiB: a file
    under it is held whole in memory for its one PUT (5 GiB, S3's limit, was accepted)."""
    with pytest.raises(ValidationError):
        S3Settings(multipart_threshold_bytes=MIN_PART_BYTES - 1)
    with pytest.raises(ValidationError):
        S3Settings(multipart_threshold_bytes=1024**3 + 1)
    assert S3Settings(multipart_threshold_bytes=1024**3).multipart_threshold_bytes == 1024**3


def test_keys_follow_the_layout() -> None:
    """Each kind of key sits where DESIGN §10 puts it, under the prefix."""
    assert meta_key("p/", "run-1") == "p/meta/run-1.json"
    assert file_key("p/", "run-1", "plots/ü.png") == "p/files/run-1/plots/ü.png"
    assert tombstone_key("", "run-1") == "tombstones/run-1"
    assert library_key("p/", "report.pdf") == "p/library/report.pdf"
    assert probe_key("p/", "abcdef0123").startswith("p/.promoter/")


@pytest.mark.parametrize(("run_id", "relpath"), [
    ("../x", "a"), ("run", "../a"), ("run", "a/../../b"), ("run", "/etc/passwd"),
    ("run", "a//b"), ("run", "a\\b"), ("run", "a\tb"), ("run", ".promoter-tmp"), ("", "a"),
    ("run/x", "a"),
])
def test_no_input_addresses_a_key_outside_the_layout(run_id: str, relpath: str) -> None:
    """Run ids and names that could climb out of `files/<run_id>/` or merge names are refused."""
    with pytest.raises(InvalidNameError):
        file_key("p/", run_id, relpath)


@pytest.mark.parametrize("name", [".hidden", "a/b", "a\\b", "x\x01", ""])
def test_bad_library_names_refused(name: str) -> None:
    """Library keys take one plain component."""
    with pytest.raises(InvalidNameError):
        library_key("", name)


def test_keys_over_1024_bytes_refused() -> None:
    """A file name that is legal on disk but would make a key over S3's 1,024 bytes is refused."""
    name = "/".join(["d" * 200] * 6)
    assert len(name) < 4096
    with pytest.raises(InvalidNameError, match="1024"):
        file_key("p/", "run", name)
    assert relpath_from_file_key("p/", file_key("p/", "run", "a/b.txt")) == "a/b.txt"
    assert relpath_from_file_key("p/", "p/files/../x") is None


def test_probe_key_takes_only_hex() -> None:
    """The probe key's token is promoter's own hex, never a name from outside."""
    with pytest.raises(InvalidNameError):
        probe_key("", "../meta/x")


def test_run_ids_from_listed_meta_keys() -> None:
    """A listed meta/ key gives its run id; anything else there is not a run."""
    assert run_id_from_meta_key("p/", "p/meta/run-1.json") == "run-1"
    for key in ("p/meta/.x.json", "p/meta/a/b.json", "p/meta/run-1.txt", "q/meta/r.json",
                "p/meta/.json"):
        assert run_id_from_meta_key("p/", key) is None


@pytest.mark.parametrize("size", [0, 1, 64 * 1024**2, 5 * GIB, 160 * GIB, 5 * 1024 * GIB])
def test_part_size_fits_ten_thousand_parts(size: int) -> None:
    """Parts are at least 8 MiB (S3 wants 5), and large enough that any size up to 5 TiB
    takes ≤ 10,000."""
    part = part_size_for(size)
    assert part >= 8 * 1024**2 and part % (1024 * 1024) == 0
    assert -(-size // part) <= MAX_PARTS
    assert part <= 5 * GIB


class _ClientError(Exception):
    """The shape of botocore's ClientError: a `response` dict."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("NoSuchBucket", 404, S3ConfigError), ("InvalidAccessKeyId", 403, S3ConfigError),
    ("SignatureDoesNotMatch", 403, S3ConfigError), ("AccessDenied", 403, S3ConfigError),
    ("NoSuchKey", 404, ObjectNotFound), ("PreconditionFailed", 412, PreconditionFailed),
    ("SlowDown", 503, StoreUnavailable), ("InternalError", 500, StoreUnavailable),
    ("ServiceUnavailable", 503, StoreUnavailable),
])
def test_classification_of_s3_answers(code: str, status: int, kind: type[Exception]) -> None:
    """Definite refusals are configuration, throttling and 5xx are outage, 412 is a lost race."""
    err = classify(_ClientError(code, status), endpoint="http://127.0.0.1:1", bucket="b", key="k")
    assert type(err) is kind
    assert isinstance(err, ConfigError) == (kind is S3ConfigError)
