"""Hostile requests against the HTTP API: nothing read or written outside the store.

DESIGN §6 and §7: traversal in every shape on every route, planted links,
foreign hosts and origins, missing headers and tokens, oversized uploads, and
agent-written HTML and SVG.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import pytest

from promoter.errors import ConfigError
from promoter.store import Store
from promoter.web import create_app
from promoter.web.files import FILE_CSP
from tests.web_helpers import CSRF, client_for, make_store, populate, tree_snapshot

SECRET = b"TOP-SECRET-CONTENT"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = make_store(tmp_path / "root")
    populate(store, tmp_path / "root", "run-a", {"plot.png": b"png", "sub/x.txt": b"x"})
    populate(store, tmp_path / "root", "victim", {"keep.txt": b"victim data"})
    (tmp_path / "root" / "library" / "lib.txt").write_bytes(b"library")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "root" / "secret.txt").write_bytes(SECRET)
    return store


def raw_request(app: Any, method: str, raw_path: bytes, headers: dict[str, str] | None = None,
                body_chunks: list[bytes] | None = None, disconnect: bool = False,
                ) -> tuple[int, dict[str, str], bytes, bool]:
    """Call the app with a raw path, decoded the way uvicorn decodes it (no client
    normalises `..` away). Returns status, headers, body and whether the body was read."""
    raw, _, query = raw_path.partition(b"?")
    all_headers = {"host": "localhost", **(headers or {})}
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": unquote(raw.decode("ascii")), "raw_path": raw,
        "query_string": query, "root_path": "", "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8730),
        "headers": [(k.lower().encode(), v.encode()) for k, v in all_headers.items()],
    }
    chunks = list(body_chunks or [b""])
    read = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read = True
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks) or disconnect}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    hdrs = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, body, read


# Every shape of climbing out, on every route that takes a name.
TRAVERSALS = [
    "../../../secret.txt", "%2e%2e/%2e%2e/%2e%2e/secret.txt", "..%2F..%2F..%2Fsecret.txt",
    "%2E%2E%2F%2E%2E%2Fsecret.txt", "/etc/passwd", "%2Fetc%2Fpasswd", "//etc/passwd",
    "plot.png%00.txt", "%00", "sub/../../victim/files/keep.txt", "..", ".", "sub/./x.txt",
    "x" * 5000, ("a/" * 3000) + "b", "..%5C..%5Csecret.txt",
]
RUN_IDS = ["..", "%2e%2e", "..%2Fvictim", "-x", ".tombstones", ".locks", "x" * 200,
           "run-a%00", "%2Fetc", "run-a%2F..%2Fvictim"]


def _routes_for_name(name: str) -> list[tuple[str, str]]:
    base = "/runtime/artifacts/run-a/files/"
    return [("GET", base + name), ("HEAD", base + name), ("DELETE", base + name),
            ("POST", base + name + "/promote"), ("GET", "/runtime/library/" + name),
            ("HEAD", "/runtime/library/" + name), ("POST", "/runtime/library?name=" + name),
            ("POST", base + "plot.png/promote?as=" + name), ("GET", "/static/" + name),
            ("GET", "/runtime/artifacts?filter=current&run_id=" + name)]


def _routes_for_run(run_id: str) -> list[tuple[str, str]]:
    return [("GET", f"/runtime/artifacts/{run_id}"), ("DELETE", f"/runtime/artifacts/{run_id}"),
            ("PATCH", f"/runtime/artifacts/{run_id}"),
            ("GET", f"/runtime/artifacts/{run_id}/files/plot.png"),
            ("DELETE", f"/runtime/artifacts/{run_id}/files/plot.png"),
            ("POST", f"/runtime/artifacts/{run_id}/files/plot.png/promote")]


def _assert_refused(store: Store, tmp_path: Path, requests: list[tuple[str, str]]) -> None:
    app = create_app(store.config, store)
    before = tree_snapshot(tmp_path)
    for method, path in requests:
        body_chunks = None
        headers = dict(CSRF)
        if method == "PATCH":
            headers["content-type"] = "application/json"
            body_chunks = [b'{"keep": true}']
        if path.startswith("/runtime/library?"):
            headers["content-type"] = "multipart/form-data; boundary=b"
            body_chunks = [b'--b\r\nContent-Disposition: form-data; name="file"; '
                           b'filename="f"\r\n\r\n' + SECRET + b"\r\n--b--\r\n"]
        status, _, body, _ = raw_request(app, method, path.encode(), headers, body_chunks)
        allowed = {400, 404} if not path.startswith("/runtime/artifacts?") else {200, 400}
        assert status in allowed, (method, path, status, body)
        assert SECRET not in body, (method, path)
        assert b"Traceback" not in body and str(tmp_path).encode() not in body
        if status == 200:
            assert json.loads(body) == {"artifacts": []}
    assert tree_snapshot(tmp_path) == before, "a refused request changed the filesystem"


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_in_file_and_library_names_touches_nothing(
        store: Store, tmp_path: Path, name: str) -> None:
    """Every traversal shape in a file or library name is 400 or 404 and touches nothing."""
    _assert_refused(store, tmp_path, _routes_for_name(name))


@pytest.mark.parametrize("run_id", RUN_IDS)
def test_traversal_in_run_ids_touches_nothing(store: Store, tmp_path: Path, run_id: str) -> None:
    """Every traversal shape or reserved name as a run id is 400 or 404 and touches nothing."""
    _assert_refused(store, tmp_path, _routes_for_run(run_id))


def test_a_double_encoded_name_is_taken_literally(store: Store, tmp_path: Path) -> None:
    """%252e%252e%252f is decoded once: a literal '%2e%2e%2f' name, inside the library."""
    app = create_app(store.config, store)
    status, _, _, _ = raw_request(
        app, "POST", b"/runtime/library?name=%252e%252e%252fsecret.txt",
        {**CSRF, "content-type": "multipart/form-data; boundary=b"},
        [b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\nz\r\n--b--\r\n'])
    assert status == 201
    assert (tmp_path / "root" / "library" / "%2e%2e%2fsecret.txt").read_bytes() == b"z"
    assert (tmp_path / "secret.txt").read_bytes() == SECRET


def test_a_symlink_planted_among_the_stored_files_is_never_followed(
        store: Store, tmp_path: Path) -> None:
    """A stored copy replaced by a link, or a linked folder on the way, is 404, never read."""
    files = tmp_path / "root" / "artifacts" / "run-a" / "files"
    (files / "plot.png").unlink()
    (files / "plot.png").symlink_to(tmp_path / "secret.txt")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_bytes(SECRET)
    shutil.rmtree(files / "sub")
    (files / "sub").symlink_to(outside)
    client = client_for(store)
    for url in ("/runtime/artifacts/run-a/files/plot.png",
                "/runtime/artifacts/run-a/files/sub/x.txt"):
        r = client.get(url)
        assert r.status_code == 404
        assert SECRET not in r.content
        assert client.head(url).status_code == 404
        promote = client.post(url + "/promote", headers=CSRF)
        assert promote.status_code == 404
    assert sorted(p.name for p in (tmp_path / "root" / "library").iterdir()) == ["lib.txt"]


def test_a_symlink_planted_as_a_run_folder_is_no_run(store: Store, tmp_path: Path) -> None:
    """A link where a run folder should be is not a run: not listed, 404, nothing written."""
    outside = tmp_path / "outside-run"
    shutil.copytree(tmp_path / "root" / "artifacts" / "victim", outside)
    (outside / "files" / "keep.txt").write_bytes(SECRET)
    (tmp_path / "root" / "artifacts" / "evil").symlink_to(outside)
    before = tree_snapshot(outside)
    client = client_for(store)
    assert "evil" not in {i["run_id"] for i in client.get("/runtime/artifacts").json()["artifacts"]}
    assert client.get("/runtime/artifacts/evil").status_code == 404
    r = client.get("/runtime/artifacts/evil/files/keep.txt")
    assert (r.status_code, SECRET in r.content) == (404, False)
    assert client.delete("/runtime/artifacts/evil", headers=CSRF).status_code == 404
    assert client.patch("/runtime/artifacts/evil", json={"keep": True},
                        headers=CSRF).status_code == 404
    assert tree_snapshot(outside) == before


def test_a_symlink_in_the_library_is_not_a_library_file(store: Store, tmp_path: Path) -> None:
    """A link in library/ is neither listed nor served, and an upload replaces the link only."""
    library = tmp_path / "root" / "library"
    (library / "link.txt").symlink_to(tmp_path / "secret.txt")
    client = client_for(store)
    names = [f["name"] for f in client.get("/runtime/library").json()["files"]]
    assert names == ["lib.txt"]
    r = client.get("/runtime/library/link.txt")
    assert (r.status_code, SECRET in r.content) == (404, False)
    up = client.post("/runtime/library?name=link.txt&overwrite=true", headers=CSRF,
                     files={"file": ("x", b"new")})
    assert up.status_code == 201
    assert (tmp_path / "secret.txt").read_bytes() == SECRET
    assert not (library / "link.txt").is_symlink()


# -- access ------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "status"), [
    ("localhost", 200), ("localhost:8730", 200), ("127.0.0.1:1", 200), ("[::1]:8730", 200),
    ("LOCALHOST", 200), ("evil.example", 400), ("evil.example:8730", 400),
    ("localhost.evil.example", 400), ("127.0.0.1.nip.io", 400), ("", 400),
])
def test_host_allow_list(store: Store, host: str, status: int) -> None:
    """Only hosts of http.allowed_hosts, with or without a port, are answered (DNS rebinding)."""
    app = create_app(store.config, store)
    got, _, body, _ = raw_request(app, "GET", b"/healthz", {"host": host})
    assert got == status
    if status == 400:
        assert set(json.loads(body)) == {"detail"}


def test_missing_host_header_is_400(store: Store) -> None:
    """A request without any Host header is refused."""
    app = create_app(store.config, store)
    scope_headers: dict[str, str] = {}
    status, _, _, _ = raw_request(app, "GET", b"/healthz", scope_headers | {"host": ""})
    assert status == 400


@pytest.mark.parametrize(("method", "url"), [
    ("DELETE", "/runtime/artifacts/run-a"),
    ("DELETE", "/runtime/artifacts/run-a/files/plot.png"),
    ("PATCH", "/runtime/artifacts/run-a"),
    ("POST", "/runtime/artifacts/run-a/files/plot.png/promote"),
    ("POST", "/runtime/sweep"), ("POST", "/runtime/library"),
])
def test_changing_requests_need_the_csrf_header_and_a_friendly_origin(
        store: Store, tmp_path: Path, method: str, url: str) -> None:
    """No X-Promoter-Request header, or a cross-site Origin: 403, and nothing changes."""
    client = client_for(store)
    before = tree_snapshot(tmp_path)
    kwargs: dict[str, Any] = {"json": {"keep": True}} if method == "PATCH" else {}
    r = client.request(method, url, **kwargs)
    assert r.status_code == 403
    assert r.json() == {"detail": "Changing requests need the X-Promoter-Request header."}
    for origin in ("https://evil.example", "null", "http://localhost.evil.example",
                   "http://localhost:9999"):
        r = client.request(method, url, headers={**CSRF, "Origin": origin}, **kwargs)
        assert r.status_code == 403, origin
        assert r.json() == {"detail": "Changing requests from another site are refused."}
    assert tree_snapshot(tmp_path) == before


def test_same_origin_changes_are_allowed(store: Store) -> None:
    """The page's own Origin (same host and port) with the header may change things."""
    client = client_for(store)
    r = client.patch("/runtime/artifacts/run-a", json={"keep": True},
                     headers={**CSRF, "Origin": "http://localhost", "Host": "localhost"})
    assert r.status_code == 200
    r = client.patch("/runtime/artifacts/run-a", json={"keep": True},
                     headers={**CSRF, "Origin": "http://127.0.0.1:8730", "Host": "127.0.0.1:8730"})
    assert r.status_code == 200


def _token_store(tmp_path: Path, token_text: str = "  s3cret-token \n") -> Store:  # noqa: S107
    token = tmp_path / "token"
    token.write_text(token_text)
    store = make_store(tmp_path / "root", http={"token_file": str(token)})
    populate(store, tmp_path / "root", "run-a", {"plot.png": b"png"})
    return store


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Bearer s3cret-toke",
                                  "Bearer s3cret-tokenX", "Basic s3cret-token", "s3cret-token",
                                  "Bearer  "])
def test_a_wrong_or_missing_token_is_401(tmp_path: Path, auth: str | None) -> None:
    """With http.token_file set, /runtime/* and /metrics need the bearer token: else 401."""
    client = client_for(_token_store(tmp_path))
    headers = {"Authorization": auth} if auth else {}
    for url in ("/runtime/artifacts", "/runtime/artifacts/run-a/files/plot.png",
                "/runtime/library", "/metrics", "/runtime/nothing"):
        r = client.get(url, headers=headers)
        assert r.status_code == 401, url
        assert r.headers["www-authenticate"] == 'Bearer realm="promoter"'
        assert r.json() == {"detail": "This request needs a valid bearer token."}
    r = client.delete("/runtime/artifacts/run-a", headers={**headers, **CSRF})
    assert r.status_code == 401
    assert (tmp_path / "root" / "artifacts" / "run-a").exists()


def test_the_right_token_opens_the_api(tmp_path: Path) -> None:
    """The token (whitespace around it in the file ignored) opens the API; CSRF not needed."""
    client = client_for(_token_store(tmp_path))
    auth = {"Authorization": "Bearer s3cret-token"}
    assert client.get("/runtime/artifacts", headers=auth).status_code == 200
    lower = {"Authorization": "bearer s3cret-token"}
    assert client.get("/metrics", headers=lower).status_code == 200
    assert client.patch("/runtime/artifacts/run-a", json={"keep": True},
                        headers=auth).status_code == 200
    cross = client.patch("/runtime/artifacts/run-a", json={"keep": True},
                         headers={**auth, "Origin": "https://evil.example"})
    assert cross.status_code == 403


def test_the_page_and_healthz_stay_open_with_a_token(tmp_path: Path) -> None:
    """/, /static/*, /healthz and /openapi.json need no token."""
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html>")
    (static / "app.js").write_text("")
    client = client_for(_token_store(tmp_path), static_dir=static)
    for url in ("/", "/static/app.js", "/healthz", "/openapi.json"):
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("text", ["", "  \n"])
def test_an_empty_or_missing_token_file_is_a_configuration_error(tmp_path: Path,
                                                                 text: str) -> None:
    """A token file that is empty or missing stops the server from starting at all."""
    token = tmp_path / "token"
    token.write_text(text)
    store = make_store(tmp_path / "root", http={"token_file": str(token)})
    with pytest.raises(ConfigError, match="empty"):
        create_app(store.config, store)
    missing = make_store(tmp_path / "r2", http={"token_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="token_file"):
        create_app(missing.config, missing)


def test_no_cors_headers_by_default(store: Store) -> None:
    """Without http.cors_origins there is no CORS header, and preflights are refused."""
    client = client_for(store)
    r = client.get("/runtime/artifacts", headers={"Origin": "https://ui.example"})
    assert r.status_code == 200
    assert not any(h.startswith("access-control-") for h in r.headers)
    pre = client.options("/runtime/artifacts/run-a", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "DELETE"})
    assert pre.status_code == 403
    assert not any(h.startswith("access-control-") for h in pre.headers)


def test_cors_origins_get_preflights_and_headers(tmp_path: Path) -> None:
    """An origin of http.cors_origins gets its preflight and the CORS answer headers."""
    store = make_store(tmp_path, http={"cors_origins": ["https://ui.example"]})
    populate(store, tmp_path, "run-a", {"a.txt": b"1"})
    client = client_for(store)
    pre = client.options("/runtime/artifacts/run-a", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "x-promoter-request"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "https://ui.example"
    assert "DELETE" in pre.headers["access-control-allow-methods"]
    assert "X-Promoter-Request" in pre.headers["access-control-allow-headers"]
    r = client.patch("/runtime/artifacts/run-a", json={"keep": True},
                     headers={**CSRF, "Origin": "https://ui.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    other = client.options("/runtime/artifacts/run-a", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"})
    assert other.status_code == 403
    assert "access-control-allow-origin" not in other.headers


# -- uploads -----------------------------------------------------------------------------


def _multipart(size: int) -> bytes:
    return (b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
            + b"x" * size + b"\r\n--b--\r\n")


def test_an_announced_oversized_upload_is_refused_before_reading(tmp_path: Path) -> None:
    """A Content-Length over the limit is 413 before a byte of the body is read."""
    store = make_store(tmp_path, http={"max_upload_bytes": 1000})
    app = create_app(store.config, store)
    status, _, body, read = raw_request(app, "POST", b"/runtime/library", {
        **CSRF, "content-type": "multipart/form-data; boundary=b",
        "content-length": str(10 * 1024 * 1024)}, [b"x"])
    assert status == 413
    assert not read
    assert json.loads(body) == {
        "detail": "Larger than the 1000 B upload limit (http.max_upload_bytes)."}


def test_an_oversized_streamed_upload_is_cut_off_and_leaves_nothing(tmp_path: Path) -> None:
    """Without a Content-Length, the limit is enforced while streaming: 413, no file, no temp."""
    store = make_store(tmp_path, http={"max_upload_bytes": 100_000})
    app = create_app(store.config, store)
    payload = _multipart(300_000)
    chunks = [payload[i:i + 8192] for i in range(0, len(payload), 8192)]
    status, _, _, _ = raw_request(app, "POST", b"/runtime/library", {
        **CSRF, "content-type": "multipart/form-data; boundary=b"}, chunks)
    assert status == 413
    assert os.listdir(tmp_path / "library") == []


def test_a_streamed_upload_within_the_limit_is_stored(tmp_path: Path) -> None:
    """The same stream under the limit is stored whole."""
    store = make_store(tmp_path, http={"max_upload_bytes": 400_000})
    app = create_app(store.config, store)
    payload = _multipart(300_000)
    chunks = [payload[i:i + 8192] for i in range(0, len(payload), 8192)]
    status, _, _, _ = raw_request(app, "POST", b"/runtime/library", {
        **CSRF, "content-type": "multipart/form-data; boundary=b"}, chunks)
    assert status == 201
    assert (tmp_path / "library" / "big.bin").read_bytes() == b"x" * 300_000
    assert os.listdir(tmp_path / "library") == ["big.bin"]


def test_a_client_that_goes_away_mid_upload_leaves_nothing(tmp_path: Path) -> None:
    """An upload whose client disconnects half-way leaves no file and no temporary."""
    store = make_store(tmp_path)
    app = create_app(store.config, store)
    payload = _multipart(300_000)[:150_000]
    chunks = [payload[i:i + 8192] for i in range(0, len(payload), 8192)]
    status, _, _, _ = raw_request(app, "POST", b"/runtime/library", {
        **CSRF, "content-type": "multipart/form-data; boundary=b"}, chunks, disconnect=True)
    assert status == 400
    assert os.listdir(tmp_path / "library") == []


# -- agent documents in a browser --------------------------------------------------------


def test_html_and_svg_artifacts_are_attachments_under_the_sandbox(store: Store,
                                                                   tmp_path: Path) -> None:
    """HTML and SVG are downloads by default, always with the sandbox CSP and nosniff."""
    populate(store, tmp_path / "root", "xss", {
        "report.html": b"<script>fetch('/runtime/artifacts')</script>",
        "logo.svg": b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>",
        "page.xhtml": b"<html xmlns='http://www.w3.org/1999/xhtml'/>",
        "fake.png": b"<script>alert(1)</script>"})
    client = client_for(store)
    for name in ("report.html", "logo.svg", "page.xhtml"):
        r = client.get(f"/runtime/artifacts/xss/files/{name}")
        assert r.headers["content-disposition"].startswith("attachment;"), name
        assert r.headers["content-security-policy"] == FILE_CSP
        assert r.headers["content-security-policy"].startswith("sandbox;")
        assert r.headers["x-content-type-options"] == "nosniff"
    fake = client.get("/runtime/artifacts/xss/files/fake.png")
    assert fake.headers["content-type"] == "image/png"  # from the name, never sniffed
    assert fake.headers["x-content-type-options"] == "nosniff"
    assert fake.headers["content-security-policy"] == FILE_CSP


def test_error_answers_never_name_paths_outside_the_store(store: Store, tmp_path: Path) -> None:
    """Error sentences name runs and files of the store, never a filesystem path."""
    client = client_for(store)
    shutil.rmtree(tmp_path / "root" / "library")
    answers = [(client.get("/runtime/library/lib.txt"), 503),
               (client.post("/runtime/library", headers=CSRF, files={"file": ("a.txt", b"1")}),
                503),
               (client.get("/runtime/artifacts/nope"), 404), (client.get("/healthz"), 503)]
    for r, status in answers:
        assert r.status_code == status, r.text
        assert str(tmp_path) not in r.text
        assert "Traceback" not in r.text
