"""What a failed S3 call means: configuration, outage, not found or a lost race (DESIGN §10).

A missing bucket and refused credentials are definite answers from the store, so
they are configuration errors (exit 2); a store that cannot be reached, times out,
answers 5xx or throttles is an outage, which the daemon waits out. Messages name
the endpoint and the bucket, never a credential: they are built here from the kind
of failure, not copied from the client's text (which can quote whole requests).
"""

from __future__ import annotations

import re

from promoter.errors import ConfigError, NotFoundError, PromoterError, StoreIOError

__all__ = [
    "ObjectNotFound",
    "ObjectRefused",
    "PreconditionFailed",
    "S3ConfigError",
    "SourceChanged",
    "StoreUnavailable",
    "classify",
]

_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidSecurity",
})
# The store refuses this one request for good (trying again cannot help): not an outage.
_REFUSED_CODES = frozenset({
    "KeyTooLongError", "MetadataTooLarge", "InvalidArgument", "InvalidRange", "EntityTooLarge",
    "EntityTooSmall", "InvalidRequest", "InvalidPart", "InvalidPartOrder", "MalformedXML",
    "InvalidDigest", "BadDigest", "InvalidObjectName",
})


class S3ConfigError(ConfigError):
    """The store answered definitely that this configuration cannot work (exit 2)."""


class StoreUnavailable(StoreIOError):
    """The store cannot be reached or is failing for now: wait and try again."""


class ObjectNotFound(NotFoundError):
    """The key does not exist (the bucket does)."""


class ObjectRefused(StoreIOError):
    """The store refused this request for good (key too long, bad range...): do not retry."""


class PreconditionFailed(PromoterError):
    """A conditional write lost its race (HTTP 412): read again, then retry."""


class SourceChanged(StoreIOError):
    """The file changed while it was being uploaded; the upload was abandoned."""


def _where(endpoint: str, bucket: str) -> str:
    return f"bucket {bucket!r} at {endpoint or 'AWS S3'}"


def _code_of(text: str) -> str:
    match = re.search(r"<Code>([A-Za-z]+)</Code>", text)
    return match.group(1) if match else ""


def classify(exc: BaseException, *, endpoint: str, bucket: str, key: str = "") -> PromoterError:
    """Map a client exception (obstore or botocore) to promoter's error tree."""
    where = _where(endpoint, bucket)
    if isinstance(exc, PromoterError):
        return exc
    kind, code, status = _inspect(exc)
    if kind == "race" or code == "PreconditionFailed" or status == 412:
        return PreconditionFailed(f"conditional write lost its race on {key!r} in {where}")
    if code == "NoSuchBucket":
        return S3ConfigError(f"no such {where}")
    if kind == "nocreds":
        return S3ConfigError(f"no AWS credentials found for {where} (environment, profile, role)")
    if kind == "builder":
        return S3ConfigError(f"the S3 client refused the configuration for {where}")
    if kind == "panic":
        return S3ConfigError(f"the S3 client could not build a request for {where} "
                             "(a credential or setting with characters a header cannot carry)")
    if code in _CREDENTIAL_CODES or kind == "denied" or status in (401, 403):
        return S3ConfigError(f"credentials refused by {where}")
    if kind == "notfound" or code in ("NoSuchKey", "NotFound") or status == 404:
        return ObjectNotFound(f"no object {key!r} in {where}")
    if code in _REFUSED_CODES or (not code and status in (400, 411, 413, 416)):
        return ObjectRefused(f"{where} refused {key!r}: {code or f'HTTP {status}'}")
    reason = code or (f"HTTP {status}" if status else kind or type(exc).__name__)
    return StoreUnavailable(f"store unavailable: {where} ({reason})")


def _inspect(exc: BaseException) -> tuple[str, str, int]:
    """(kind, S3 error code, HTTP status) from whichever client raised `exc`."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        err = response.get("Error", {})
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        code = str(err.get("Code", ""))
        if code.isdigit():
            status, code = int(code), ""
        return "client", code, status
    name = type(exc).__name__
    if name == "PanicException":  # obstore's Rust side refused, e.g. a header with a newline
        return "panic", "", 0
    if name == "NoCredentialsError" or (
        isinstance(exc, ValueError) and "get_credentials" in str(exc)
    ):
        return "nocreds", "", 0
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                "ConnectionClosedError", "ProxyConnectionError"):
        return "connection", "", 0
    text = str(exc)
    code = _code_of(text)
    status_match = re.search(r"status code: (\d{3})", text)
    status = int(status_match.group(1)) if status_match else 0
    kinds = {
        "AlreadyExistsError": "race", "PreconditionError": "race",
        "PermissionDeniedError": "denied", "UnauthenticatedError": "denied",
        "NotFoundError": "notfound",
    }
    kind = kinds.get(name, "")
    if not kind and "builder error" in text:
        kind = "builder"
    if not kind and ("error sending request" in text or "timed out" in text.lower()):
        kind = "connection"
    return kind, code, status
