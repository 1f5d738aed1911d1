"""Signed links: a file URL that works without the bearer header until it expires (DESIGN §7).

HMAC-SHA256 over the method, the path and the expiry, with a key derived from
the token (never the token itself, so a leaked link reveals nothing that opens
other doors). A link is minted for GET and also admits HEAD of the same path;
it names one path, so it grants that one file and nothing else. Checking is
constant-time (`hmac.compare_digest`); every failure is the same "no".
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final
from urllib.parse import quote

__all__ = ["EXPIRES", "SIG", "LinkSigner", "link_path"]

EXPIRES: Final = "expires"
SIG: Final = "sig"
_CONTEXT: Final = b"promoter signed links v1"
_SIG_LEN: Final = 64  # hex of a SHA-256 MAC
_MAX_EXPIRES_DIGITS: Final = 12  # Unix seconds up to year 33658: more is malformed


def link_path(run_id: str, filename: str) -> str:
    """The file route's path for an artifact, percent-encoded as a client sends it."""
    return f"/runtime/artifacts/{quote(run_id, safe='')}/files/{quote(filename, safe='/')}"


class LinkSigner:
    """Signs and checks links with a key derived from the server's token."""

    def __init__(self, token: bytes) -> None:
        self._key = hmac.new(token, _CONTEXT, hashlib.sha256).digest()

    def _mac(self, method: str, path: str, expires: int) -> str:
        message = f"{method}\n{path}\n{expires}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, path: str, expires: int) -> str:
        """The signature of GET `path` (the decoded path, as the router sees it) until `expires`."""
        return self._mac("GET", path, expires)

    def check(self, method: str, path: str, expires_text: str, sig: str, now: float) -> bool:
        """True only for GET or HEAD of the signed path, before expiry, with the right MAC."""
        if method not in ("GET", "HEAD"):
            return False
        if not expires_text.isascii() or not expires_text.isdigit() or \
                len(expires_text) > _MAX_EXPIRES_DIGITS:
            return False
        if len(sig) != _SIG_LEN or not sig.isascii():
            return False
        expires = int(expires_text)
        good = hmac.compare_digest(self._mac("GET", path, expires).encode(),
                                   sig.lower().encode())
        return good and now < expires
