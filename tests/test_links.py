"""Signed links: `POST .../files/{filename}/link` and the guard that honours them (DESIGN §7)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from promoter.signing import LinkSigner
from promoter.store import Store
from promoter.web.files import FILE_CSP
from tests.web_helpers import CSRF, WebClient, client_for, make_store, populate

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FILES = {"report.html": b"<html><script>alert(1)</script>hi</html>",
         "other.html": b"<html>other</html>",
         "sub/dir/é t.txt": b"unicode",
         "a.txt": b"aaa"}


def _store(tmp_path: Path, token: bool = True) -> Store:
    extra: dict[str, object] = {}
    if token:
        (tmp_path / "token").write_text(TOKEN + "\n")
        extra = {"http": {"token_file": str(tmp_path / "token")}}
    store = make_store(tmp_path / "root", **extra)  # type: ignore[arg-type]
    populate(store, tmp_path / "root", "r1", FILES)
    populate(store, tmp_path / "root", "r2", {"report.html": b"<html>r2</html>"})
    return store


@pytest.fixture
def signed(tmp_path: Path) -> WebClient:
    return client_for(_store(tmp_path))


def _link(client: WebClient, filename: str, **params: object) -> str:
    r = client.post(f"/runtime/artifacts/r1/files/{quote(filename)}/link", headers=AUTH,
                    params=params)
    assert r.status_code == 201, r.text
    return str(r.json()["url"])


def _parts(url: str) -> tuple[str, dict[str, str]]:
    split = urlsplit(url)
    return split.path, {k: v[0] for k, v in parse_qs(split.query).items()}


def test_a_link_opens_the_file_without_the_token_with_file_headers(signed: WebClient) -> None:
    """GET and HEAD of a signed link answer the file with every file header (sandbox CSP)."""
    r = signed.post("/runtime/artifacts/r1/files/report.html/link", headers=AUTH)
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"url", "expires_at"} and body["expires_at"].endswith("Z")
    url = body["url"]
    assert url.startswith("/runtime/artifacts/r1/files/report.html?expires=")
    assert signed.get("/runtime/artifacts/r1/files/report.html").status_code == 401
    got = signed.get(url + "&view=1")
    assert got.status_code == 200 and got.content == FILES["report.html"]
    assert got.headers["content-security-policy"] == FILE_CSP
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-disposition"].startswith("inline")
    assert got.headers["etag"].strip('"') == signed.get(
        "/runtime/artifacts/r1", headers=AUTH).json()["artifacts"][0]["sha256"]
    head = signed.head(url)
    assert head.status_code == 200 and head.content == b""
    ranged = signed.get(url, headers={"Range": "bytes=0-5"})
    assert ranged.status_code == 206 and ranged.content == FILES["report.html"][:6]


def test_subfolder_and_unicode_names_sign_and_open(signed: WebClient) -> None:
    """A file in a subfolder with a non-ASCII name gets a working link."""
    url = _link(signed, "sub/dir/é t.txt")
    assert signed.get(url).content == b"unicode"


def test_tampered_path_expiry_signature_and_other_files_are_403(signed: WebClient) -> None:
    """Another file, another run, a changed expiry or signature, a missing or doubled
    parameter: 403 with a JSON detail, never 422 and never the file."""
    path, q = _parts(_link(signed, "report.html"))
    exp, sig = q["expires"], q["sig"]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    bad = [
        f"/runtime/artifacts/r1/files/other.html?expires={exp}&sig={sig}",
        f"/runtime/artifacts/r2/files/report.html?expires={exp}&sig={sig}",
        f"/runtime/artifacts/r1/files/report.html/x?expires={exp}&sig={sig}",
        f"/runtime/artifacts/r1?expires={exp}&sig={sig}",
        f"/runtime/artifacts?expires={exp}&sig={sig}",
        f"{path}?expires={int(exp) + 1}&sig={sig}",
        f"{path}?expires={int(exp) + 1000}&sig={sig}",
        f"{path}?expires={exp}&sig={flipped}",
        f"{path}?expires={exp}&sig={sig[:-1]}",
        f"{path}?expires={exp}&sig={sig}&sig={sig}",
        f"{path}?expires={exp}",
        f"{path}?sig={sig}",
        f"{path}?expires=abc&sig={sig}",
        f"{path}?expires=-1&sig={sig}",
        f"{path}?expires=1e9&sig={sig}",
        f"{path}?expires={'9' * 40}&sig={sig}",
        f"{path}?expires={exp}&sig={'é' * 64}",
        f"{path}?expires={exp}&sig=",
    ]
    for url in bad:
        r = signed.get(url)
        assert r.status_code == 403, (url, r.status_code)
        assert r.json() == {"detail": "This link is expired, altered or malformed."}


def test_only_get_and_head_of_that_file(signed: WebClient) -> None:
    """A signed link grants no DELETE, POST or PATCH, even of the same path."""
    url = _link(signed, "a.txt")
    for method in ("DELETE", "POST", "PATCH", "PUT"):
        r = signed.request(method, url, headers=CSRF)
        assert r.status_code == 403, method
    assert signed.get("/runtime/artifacts/r1", headers=AUTH).json()["artifacts"]


def test_an_expired_link_is_403(signed: WebClient) -> None:
    """A link signed correctly but past its expiry is refused."""
    path = "/runtime/artifacts/r1/files/a.txt"
    signer = LinkSigner(TOKEN.encode())
    past = int(time.time()) - 1
    assert signed.get(f"{path}?expires={past}&sig={signer.sign(path, past)}").status_code == 403
    future = int(time.time()) + 60
    assert signed.get(f"{path}?expires={future}&sig={signer.sign(path, future)}").status_code \
        == 200
    other = LinkSigner(b"another token")
    assert signed.get(f"{path}?expires={future}&sig={other.sign(path, future)}").status_code \
        == 403


def test_ttl_bounds_and_missing_files(signed: WebClient) -> None:
    """ttl_s defaults to 300 and is at most 3600; a missing file or run is 404; the route
    itself needs the token."""
    before = int(time.time())
    _, q = _parts(_link(signed, "a.txt"))
    assert before + 299 <= int(q["expires"]) <= int(time.time()) + 301
    _, q = _parts(_link(signed, "a.txt", ttl_s=3600))
    assert int(q["expires"]) <= int(time.time()) + 3600
    for ttl in (0, 3601, "x"):
        r = signed.post("/runtime/artifacts/r1/files/a.txt/link", headers=AUTH,
                        params={"ttl_s": ttl})
        assert r.status_code == 422
    assert signed.post("/runtime/artifacts/r1/files/nope.txt/link", headers=AUTH) \
        .status_code == 404
    assert signed.post("/runtime/artifacts/zz/files/a.txt/link", headers=AUTH).status_code == 404
    assert signed.post("/runtime/artifacts/r1/files/a.txt/link").status_code == 401


def test_without_a_token_the_route_answers_a_plain_link(tmp_path: Path) -> None:
    """No token configured: the link is the file URL with its expiry, and it opens."""
    client = client_for(_store(tmp_path, token=False))
    r = client.post("/runtime/artifacts/r1/files/a.txt/link", headers=CSRF)
    assert r.status_code == 201
    path, q = _parts(r.json()["url"])
    assert path == "/runtime/artifacts/r1/files/a.txt" and set(q) == {"expires"}
    assert client.get(r.json()["url"]).content == b"aaa"
