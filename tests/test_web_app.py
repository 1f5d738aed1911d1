"""The HTTP API in-process: every route of DESIGN §7 with its statuses and headers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from promoter.metadata import RunMetadata
from promoter.store import Store
from promoter.web.files import (
    FILE_CSP,
    PAGE_CSP,
    Unsatisfiable,
    content_disposition,
    parse_range,
)
from tests.web_helpers import (
    CSRF,
    FakeClock,
    LogCapture,
    WebClient,
    client_for,
    make_store,
    populate,
    write_session_file,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def client(store: Store, tmp_path: Path) -> WebClient:
    populate(store, tmp_path, "run-a", {"plot.png": PNG, "notes/readme.md": b"# hi\n",
                                         "data.csv": b"a,b\n1,2\n"})
    return client_for(store)


# -- the run list ------------------------------------------------------------------------


def test_list_has_the_seed_shape(client: WebClient) -> None:
    """GET /runtime/artifacts answers {"artifacts": [{"run_id", "metadata"}]} with the metadata."""
    r = client.get("/runtime/artifacts")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert [item["run_id"] for item in body["artifacts"]] == ["run-a"]
    meta = RunMetadata.model_validate(body["artifacts"][0]["metadata"])
    assert {a.filename for a in meta.artifacts} == {"plot.png", "notes/readme.md", "data.csv"}


def test_list_is_newest_first(tmp_path: Path) -> None:
    """Runs are listed by creation time, newest first."""
    clock = FakeClock()
    store = make_store(tmp_path, clock)
    for run_id in ("old", "mid", "new"):
        populate(store, tmp_path, run_id, {"f.txt": run_id.encode()})
        clock.advance(minutes=1)
    ids = [i["run_id"] for i in client_for(store).get("/runtime/artifacts").json()["artifacts"]]
    assert ids == ["new", "mid", "old"]


def test_list_filters(tmp_path: Path) -> None:
    """current, recent and expiring select the runs DESIGN §7 says they do."""
    clock = FakeClock()
    store = make_store(tmp_path, clock, retention={"days": 2})
    populate(store, tmp_path, "aged", {"f.txt": b"1"})
    clock.advance(hours=30)  # aged: 30 h old, expires in 18 h
    populate(store, tmp_path, "kept", {"f.txt": b"2"})
    populate(store, tmp_path, "fresh", {"f.txt": b"3"})
    store.set_keep("kept", True)
    store.mark_completed("kept")
    client = client_for(store)

    def ids(query: str) -> list[str]:
        r = client.get(f"/runtime/artifacts?{query}")
        assert r.status_code == 200, r.text
        return sorted(i["run_id"] for i in r.json()["artifacts"])

    assert ids("filter=all") == ["aged", "fresh", "kept"]
    assert ids("filter=recent") == ["fresh", "kept"]
    assert ids("filter=expiring") == ["aged"]
    assert ids("filter=current") == ["aged", "fresh"]  # status active
    assert ids("filter=current&run_id=kept") == ["kept"]
    assert ids("filter=current&run_id=nothing-here") == []


def test_list_etag_gives_304_until_a_run_changes(client: WebClient, store: Store) -> None:
    """A poll with the list's ETag is 304 until the store changes; then the new list and tag."""
    first = client.get("/runtime/artifacts")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    again = client.get("/runtime/artifacts", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other = client.get("/runtime/artifacts?filter=recent", headers={"If-None-Match": etag})
    assert other.status_code == 200  # another query, another tag
    store.set_keep("run-a", True)
    changed = client.get("/runtime/artifacts", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["artifacts"][0]["metadata"]["keep"] is True


def test_list_etag_changes_when_a_run_is_deleted(client: WebClient, store: Store) -> None:
    """Deleting a run changes the list's ETag."""
    etag = client.get("/runtime/artifacts").headers["etag"]
    store.delete_run("run-a")
    r = client.get("/runtime/artifacts", headers={"If-None-Match": etag})
    assert r.status_code == 200
    assert r.json() == {"artifacts": []}


def test_list_rejects_a_bad_filter_and_run_id(client: WebClient) -> None:
    """An unknown filter is 422, a malformed run id 400, both with a one-sentence detail."""
    r = client.get("/runtime/artifacts?filter=everything")
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str)
    assert r.json()["detail"].startswith("Invalid query parameter filter")
    r = client.get("/runtime/artifacts?filter=current&run_id=../x")
    assert r.status_code == 400
    assert set(r.json()) == {"detail"}


# -- one run -----------------------------------------------------------------------------


def test_get_run_is_its_metadata(client: WebClient, tmp_path: Path) -> None:
    """GET /runtime/artifacts/{run_id} is the run's metadata.json, field for field."""
    r = client.get("/runtime/artifacts/run-a")
    assert r.status_code == 200
    on_disk = json.loads((tmp_path / "artifacts" / "run-a" / "metadata.json").read_text())
    assert r.json() == on_disk


def test_get_run_missing_and_invalid(client: WebClient) -> None:
    """A missing run is 404; an invalid run id 400."""
    assert client.get("/runtime/artifacts/nope").status_code == 404
    assert client.get("/runtime/artifacts/-bad").status_code == 400
    assert client.get("/runtime/artifacts/nope").json() == {"detail": "No run nope."}


def test_delete_run_tombstones_it(client: WebClient, tmp_path: Path) -> None:
    """DELETE a run: 204, gone from the list, a tombstone written, then 404."""
    with LogCapture() as logs:
        r = client.delete("/runtime/artifacts/run-a", headers=CSRF)
    assert r.status_code == 204
    assert r.content == b""
    assert not (tmp_path / "artifacts" / "run-a").exists()
    tomb = json.loads((tmp_path / "artifacts" / ".tombstones" / "run-a").read_text())
    assert tomb["reason"] == "rm"
    assert client.delete("/runtime/artifacts/run-a", headers=CSRF).status_code == 404
    [event] = logs.events("run.deleted")
    assert event["run_id"] == "run-a"
    assert event["client"] == "testclient"  # the store's own audit line carries the client


def test_patch_keep(client: WebClient) -> None:
    """PATCH {"keep": true} pins the run and answers its metadata; false unpins it."""
    r = client.patch("/runtime/artifacts/run-a", json={"keep": True}, headers=CSRF)
    assert r.status_code == 200
    assert r.json()["keep"] is True
    assert client.get("/runtime/artifacts/run-a").json()["keep"] is True
    r = client.patch("/runtime/artifacts/run-a", json={"keep": False}, headers=CSRF)
    assert r.json()["keep"] is False


@pytest.mark.parametrize("body", [{"keep": True, "extra": 1}, {"keep": "yes"}, {"keep": 1}, {},
                                  [True], "true"])
def test_patch_rejects_malformed_bodies(client: WebClient, body: object) -> None:
    """A body other than {"keep": bool} is 422 with one sentence, and changes nothing."""
    r = client.patch("/runtime/artifacts/run-a", json=body, headers=CSRF)
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str)
    assert client.get("/runtime/artifacts/run-a").json()["keep"] is False


def test_patch_missing_run(client: WebClient) -> None:
    """PATCH of a missing run is 404."""
    r = client.patch("/runtime/artifacts/nope", json={"keep": True}, headers=CSRF)
    assert r.status_code == 404


# -- files -------------------------------------------------------------------------------


def test_file_answer_headers(client: WebClient) -> None:
    """A stored file comes with the sandbox CSP, nosniff, its type, inline, sha256 ETag."""
    r = client.get("/runtime/artifacts/run-a/files/plot.png")
    assert r.status_code == 200
    assert r.content == PNG
    h = r.headers
    assert h["content-security-policy"] == FILE_CSP
    assert h["x-content-type-options"] == "nosniff"
    assert h["content-type"] == "image/png"
    assert h["content-disposition"] == "inline; filename=\"plot.png\"; filename*=UTF-8''plot.png"
    assert h["etag"] == f'"{hashlib.sha256(PNG).hexdigest()}"'
    assert h["cache-control"] == "no-cache"
    assert h["accept-ranges"] == "bytes"
    assert h["content-length"] == str(len(PNG))


def test_file_in_a_subfolder(client: WebClient) -> None:
    """A filename with '/' reaches files in subfolders; the disposition names the base name."""
    r = client.get("/runtime/artifacts/run-a/files/notes/readme.md")
    assert r.status_code == 200
    assert r.content == b"# hi\n"
    assert r.headers["content-type"].startswith("text/markdown")
    assert r.headers["content-disposition"].startswith('inline; filename="readme.md"')


@pytest.mark.parametrize(("name", "kind"), [
    ("a.png", "inline"), ("a.jpg", "inline"), ("a.pdf", "inline"), ("a.mp3", "inline"),
    ("a.mp4", "inline"), ("a.txt", "inline"), ("a.csv", "inline"), ("a.json", "inline"),
    ("a.md", "inline"), ("a.html", "attachment"), ("a.svg", "attachment"),
    ("a.zip", "attachment"), ("a.js", "attachment"), ("a.bin", "attachment"),
    ("a.xml", "attachment"),
])
def test_disposition_by_type(store: Store, tmp_path: Path, name: str, kind: str) -> None:
    """Inline for images, PDF, audio, video, text, CSV, JSON, Markdown; else attachment."""
    populate(store, tmp_path, "types", {name: b"content"})
    client = client_for(store)
    r = client.get(f"/runtime/artifacts/types/files/{name}")
    assert r.headers["content-disposition"].split(";")[0] == kind
    forced = client.get(f"/runtime/artifacts/types/files/{name}?download=1")
    assert forced.headers["content-disposition"].split(";")[0] == "attachment"


def test_view_shows_html_and_svg_inline_under_the_sandbox(store: Store, tmp_path: Path) -> None:
    """?view=1 serves HTML and SVG inline with the same sandbox; ?download=1 still wins."""
    populate(store, tmp_path, "rep", {"report/index.html": b"<script>alert(1)</script>",
                                      "chart.svg": b"<svg onload='alert(1)'/>"})
    client = client_for(store)
    for name, ctype in (("report/index.html", "text/html"), ("chart.svg", "image/svg+xml")):
        r = client.get(f"/runtime/artifacts/rep/files/{name}?view=1")
        assert r.headers["content-disposition"].startswith("inline;")
        assert r.headers["content-security-policy"] == FILE_CSP
        assert r.headers["content-type"] == ctype
        both = client.get(f"/runtime/artifacts/rep/files/{name}?view=1&download=1")
        assert both.headers["content-disposition"].startswith("attachment;")


def test_content_disposition_encodes_names_per_rfc_6266() -> None:
    """Non-ASCII, quotes, backslashes and control characters never break the header."""
    value = content_disposition("inline", 'dir/r\u00e9sum\u00e9 "q"\\\r\n%.txt')
    assert value == ("inline; filename=\"r_sum_ _q_____.txt\"; "
                     "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22q%22%5C%0D%0A%25.txt")
    value.encode("latin-1")


def test_file_etag_gives_304(client: WebClient) -> None:
    """If-None-Match with the sha256 tag is 304 with no body; another tag is 200."""
    etag = client.get("/runtime/artifacts/run-a/files/data.csv").headers["etag"]
    r = client.get("/runtime/artifacts/run-a/files/data.csv", headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    assert r.headers["content-security-policy"] == FILE_CSP
    star = client.get("/runtime/artifacts/run-a/files/data.csv", headers={"If-None-Match": "*"})
    assert star.status_code == 304
    other = client.get("/runtime/artifacts/run-a/files/data.csv",
                       headers={"If-None-Match": '"abc", W/"def"'})
    assert other.status_code == 200


@pytest.mark.parametrize(("header", "status", "body", "content_range"), [
    ("bytes=0-3", 206, PNG[:4], f"bytes 0-3/{len(PNG)}"),
    ("bytes=10-", 206, PNG[10:], f"bytes 10-{len(PNG) - 1}/{len(PNG)}"),
    ("bytes=-5", 206, PNG[-5:], f"bytes {len(PNG) - 5}-{len(PNG) - 1}/{len(PNG)}"),
    ("bytes=5-100000", 206, PNG[5:], f"bytes 5-{len(PNG) - 1}/{len(PNG)}"),
    ("bytes=-100000", 206, PNG, f"bytes 0-{len(PNG) - 1}/{len(PNG)}"),
    ("bytes=0-1,4-5", 200, PNG, None),  # several ranges: the whole file
    ("bytes=5-2", 200, PNG, None),  # malformed: ignored
    ("items=0-3", 200, PNG, None),  # another unit: ignored
    ("bytes=abc", 200, PNG, None),
    (f"bytes={len(PNG)}-", 416, None, f"bytes */{len(PNG)}"),
    ("bytes=-0", 416, None, f"bytes */{len(PNG)}"),
])
def test_range(client: WebClient, header: str, status: int, body: bytes | None,
               content_range: str | None) -> None:
    """A single Range is 206 with Content-Range; unsatisfiable 416; others the whole file."""
    r = client.get("/runtime/artifacts/run-a/files/plot.png", headers={"Range": header})
    assert r.status_code == status
    if body is not None:
        assert r.content == body
        assert r.headers["content-length"] == str(len(body))
    else:
        assert set(r.json()) == {"detail"}
    assert r.headers.get("content-range") == content_range
    assert r.headers["content-security-policy"] == FILE_CSP


def test_if_range_with_another_tag_gets_the_whole_file(client: WebClient) -> None:
    """If-Range with a stale ETag (or a date) ignores the Range; with the current one, 206."""
    url = "/runtime/artifacts/run-a/files/plot.png"
    etag = client.get(url).headers["etag"]
    stale = client.get(url, headers={"Range": "bytes=0-3", "If-Range": '"old"'})
    assert stale.status_code == 200
    current = client.get(url, headers={"Range": "bytes=0-3", "If-Range": etag})
    assert current.status_code == 206


def test_range_parser_edge_cases() -> None:
    """Empty files and odd spacing follow RFC 9110."""
    assert parse_range(" bytes = 0 - 0 ", 10) == (0, 0)
    assert parse_range(None, 10) is None
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=0-", 0)  # nothing is inside an empty file


def test_head_has_the_headers_and_no_body(client: WebClient) -> None:
    """HEAD answers the same headers as GET without the body, for ranges too."""
    url = "/runtime/artifacts/run-a/files/plot.png"
    get = client.get(url)
    head = client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-length", "content-type", "etag", "content-disposition",
                 "content-security-policy"):
        assert head.headers[name] == get.headers[name]
    ranged = client.head(url, headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert ranged.headers["content-length"] == "10"
    assert ranged.content == b""


def test_missing_file_is_404(client: WebClient) -> None:
    """A file the run does not list is 404, in a run that exists or not."""
    assert client.get("/runtime/artifacts/run-a/files/nope.txt").status_code == 404
    assert client.get("/runtime/artifacts/nope/files/plot.png").status_code == 404
    assert client.head("/runtime/artifacts/run-a/files/nope.txt").status_code == 404


def test_large_file_streams_whole(store: Store, tmp_path: Path) -> None:
    """A file larger than one chunk arrives whole, and a range deep inside it too."""
    data = bytes(range(256)) * 8192  # 2 MiB
    populate(store, tmp_path, "big", {"big.bin": data})
    client = client_for(store)
    r = client.get("/runtime/artifacts/big/files/big.bin")
    assert r.content == data
    r = client.get("/runtime/artifacts/big/files/big.bin", headers={"Range": "bytes=300000-"})
    assert r.content == data[300000:]


def test_delete_artifact(client: WebClient, tmp_path: Path) -> None:
    """DELETE of one file: 204, its copy gone, a `removed` entry, then 404."""
    r = client.delete("/runtime/artifacts/run-a/files/notes/readme.md", headers=CSRF)
    assert r.status_code == 204
    meta = client.get("/runtime/artifacts/run-a").json()
    assert "notes/readme.md" not in {a["filename"] for a in meta["artifacts"]}
    assert [x["filename"] for x in meta["removed"]] == ["notes/readme.md"]
    assert not (tmp_path / "artifacts" / "run-a" / "files" / "notes" / "readme.md").exists()
    again = client.delete("/runtime/artifacts/run-a/files/notes/readme.md", headers=CSRF)
    assert again.status_code == 404


# -- promote -----------------------------------------------------------------------------


def test_promote_to_the_library(client: WebClient, tmp_path: Path) -> None:
    """POST .../promote copies into the library: 201 {"name", "size_bytes", ...}, Location."""
    with LogCapture() as logs:
        r = client.post("/runtime/artifacts/run-a/files/notes/readme.md/promote", headers=CSRF)
    assert r.status_code == 201
    assert r.json()["name"] == "readme.md"
    assert r.json()["size_bytes"] == 5
    assert r.headers["location"] == "/runtime/library/readme.md"
    assert (tmp_path / "library" / "readme.md").read_bytes() == b"# hi\n"
    [event] = logs.events("library.promoted")
    assert event["client"] == "testclient"


def test_promote_conflict_overwrite_and_names(client: WebClient, tmp_path: Path) -> None:
    """A taken name is 409 unless overwrite=true; as= renames; a bad name is 400."""
    url = "/runtime/artifacts/run-a/files/data.csv/promote"
    assert client.post(url, headers=CSRF).status_code == 201
    conflict = client.post(url, headers=CSRF)
    assert conflict.status_code == 409
    assert conflict.json() == {"detail": "Library file data.csv exists."}
    assert client.post(url + "?overwrite=true", headers=CSRF).status_code == 201
    renamed = client.post(url + "?as=" + quote("Q3 data.csv"), headers=CSRF)
    assert renamed.status_code == 201
    assert (tmp_path / "library" / "Q3 data.csv").exists()
    for bad in ("../x", ".hidden", "a/b", "x\x01y"):
        r = client.post(url + "?as=" + quote(bad, safe=""), headers=CSRF)
        assert r.status_code == 400, bad
    missing = client.post("/runtime/artifacts/run-a/files/nope.csv/promote", headers=CSRF)
    assert missing.status_code == 404


# -- sweep -------------------------------------------------------------------------------


def test_sweep_dry_run_then_for_real(tmp_path: Path) -> None:
    """POST /runtime/sweep?dry_run=true lists expired runs; without it, deletes them."""
    clock = FakeClock()
    store = make_store(tmp_path, clock, retention={"days": 1})
    populate(store, tmp_path, "old", {"f.txt": b"1"})
    populate(store, tmp_path, "pinned", {"f.txt": b"2"})
    store.set_keep("pinned", True)
    clock.advance(days=2)
    populate(store, tmp_path, "new", {"f.txt": b"3"})
    client = client_for(store)
    dry = client.post("/runtime/sweep?dry_run=true", headers=CSRF)
    assert dry.status_code == 200
    assert dry.json() == {"expired": ["old"], "dry_run": True}
    assert (tmp_path / "artifacts" / "old").exists()
    real = client.post("/runtime/sweep", headers=CSRF)
    assert real.json() == {"expired": ["old"], "dry_run": False}
    assert not (tmp_path / "artifacts" / "old").exists()
    assert sorted(store.run_ids()) == ["new", "pinned"]


# -- library -----------------------------------------------------------------------------


def test_library_list_and_etag(store: Store, tmp_path: Path) -> None:
    """GET /runtime/library lists files sorted by name with an ETag that gives 304."""
    (tmp_path / "library" / "b.csv").write_bytes(b"1,2\n")
    (tmp_path / "library" / "a.pdf").write_bytes(b"%PDF")
    (tmp_path / "library" / ".hidden").write_bytes(b"x")
    client = client_for(store)
    r = client.get("/runtime/library")
    assert r.status_code == 200
    files = r.json()["files"]
    assert [f["name"] for f in files] == ["a.pdf", "b.csv"]
    assert files[0]["content_type"] == "application/pdf"
    assert files[1]["size_bytes"] == 4
    assert files[0]["modified_at"].endswith("Z")
    again = client.get("/runtime/library", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    (tmp_path / "library" / "c.txt").write_bytes(b"new")
    changed = client.get("/runtime/library", headers={"If-None-Match": r.headers["etag"]})
    assert changed.status_code == 200


def test_library_file_answers(store: Store, tmp_path: Path) -> None:
    """A library file: mimetypes type, file-answer headers, stat ETag, 304, Range, HEAD, 404."""
    (tmp_path / "library" / "notes.txt").write_bytes(b"0123456789")
    client = client_for(store)
    r = client.get("/runtime/library/notes.txt")
    assert r.status_code == 200
    assert r.content == b"0123456789"
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["content-security-policy"] == FILE_CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"].startswith("inline;")
    assert r.headers["etag"].startswith('"lib-')
    etag = r.headers["etag"]
    assert client.get("/runtime/library/notes.txt",
                      headers={"If-None-Match": etag}).status_code == 304
    part = client.get("/runtime/library/notes.txt", headers={"Range": "bytes=2-4"})
    assert (part.status_code, part.content) == (206, b"234")
    assert client.head("/runtime/library/notes.txt").headers["content-length"] == "10"
    assert client.get("/runtime/library/missing.txt").status_code == 404
    assert client.get("/runtime/library/.hidden").status_code == 400


def test_upload(store: Store, tmp_path: Path) -> None:
    """POST /runtime/library stores the file under its own name: 201 and the entry."""
    client = client_for(store)
    with LogCapture() as logs:
        r = client.post("/runtime/library", headers=CSRF,
                        files={"file": ("q3 report.pdf", b"%PDF-1.4 data", "application/pdf")})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "q3 report.pdf"
    assert r.json()["size_bytes"] == 13
    assert r.headers["location"] == "/runtime/library/q3%20report.pdf"
    assert (tmp_path / "library" / "q3 report.pdf").read_bytes() == b"%PDF-1.4 data"
    [event] = logs.events("library.uploaded")
    assert event["name"] == "q3 report.pdf"
    assert event["client"] == "testclient"


def test_upload_name_conflict_and_overwrite(store: Store, tmp_path: Path) -> None:
    """name= renames; a taken name is 409 and untouched; overwrite=true replaces it."""
    client = client_for(store)
    url = "/runtime/library?name=data.csv"
    assert client.post(url, headers=CSRF, files={"file": ("x", b"one")}).status_code == 201
    conflict = client.post(url, headers=CSRF, files={"file": ("x", b"two")})
    assert conflict.status_code == 409
    assert (tmp_path / "library" / "data.csv").read_bytes() == b"one"
    replaced = client.post(url + "&overwrite=true", headers=CSRF, files={"file": ("x", b"two")})
    assert replaced.status_code == 201
    assert (tmp_path / "library" / "data.csv").read_bytes() == b"two"
    assert sorted(p.name for p in (tmp_path / "library").iterdir()) == ["data.csv"]


def test_upload_refusals(store: Store, tmp_path: Path) -> None:
    """Bad names are 400; a body without a file field or not multipart is 422; nothing stays."""
    client = client_for(store)
    assert client.post("/runtime/library?name=../x", headers=CSRF,
                       files={"file": ("x", b"1")}).status_code == 400
    assert client.post("/runtime/library", headers=CSRF,
                       files={"file": (".bashrc", b"1")}).status_code == 400
    assert client.post("/runtime/library", headers=CSRF,
                       files={"other": ("a.txt", b"1")}).status_code == 422
    assert client.post("/runtime/library", headers=CSRF, content=b"raw").status_code == 422
    r = client.post("/runtime/library", headers={**CSRF, "Content-Type":
                    "multipart/form-data; boundary=xyz"},
                    content=b'--xyz\r\nContent-Disposition: form-data; name="file"; '
                            b'filename="cut.txt"\r\n\r\npartial data')
    assert r.status_code == 422  # the body ends inside the file: never published
    assert list((tmp_path / "library").iterdir()) == []


def test_upload_over_the_limit_leaves_nothing(tmp_path: Path) -> None:
    """An upload over http.max_upload_bytes is 413 and leaves no file, not even a temporary."""
    store = make_store(tmp_path, http={"max_upload_bytes": 1000})
    client = client_for(store)
    ok = client.post("/runtime/library", headers=CSRF, files={"file": ("ok.bin", b"x" * 1000)})
    assert ok.status_code == 201
    r = client.post("/runtime/library", headers=CSRF, files={"file": ("big.bin", b"x" * 1001)})
    assert r.status_code == 413
    assert r.json() == {"detail": "Larger than the 1000 B upload limit (http.max_upload_bytes)."}
    assert sorted(p.name for p in (tmp_path / "library").iterdir()) == ["ok.bin"]


# -- health, metrics, openapi, page ------------------------------------------------------


def test_healthz(store: Store, tmp_path: Path) -> None:
    """/healthz is 200 ok while the folders are usable, 503 once one is gone."""
    client = client_for(store)
    assert client.get("/healthz").json() == {"status": "ok"}
    (tmp_path / "library").rename(tmp_path / "library-gone")
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "detail": "The library folder is not usable."}


def test_metrics(client: WebClient) -> None:
    """/metrics is Prometheus text with requests by route and status and the store's sizes."""
    client.get("/runtime/artifacts")
    client.get("/runtime/artifacts/nope")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = {(s.labels.get("route"), s.labels.get("status")): s.value
               for s in families["promoter_http_requests"].samples if s.name.endswith("_total")}
    assert samples[("/runtime/artifacts", "200")] == 1
    assert samples[("/runtime/artifacts/{run_id}", "404")] == 1
    assert "promoter_http_request_duration_seconds" in families
    assert families["promoter_store_runs"].samples[0].value == 1
    assert families["promoter_store_artifacts"].samples[0].value == 3
    assert families["promoter_store_bytes"].samples[0].value == len(PNG) + 5 + 8


def test_openapi_describes_every_route_with_models(client: WebClient) -> None:
    """/openapi.json lists DESIGN §7's routes and the metadata models."""
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    expected = {
        "/runtime/artifacts": {"get"},
        "/runtime/artifacts/{run_id}": {"get", "delete", "patch"},
        "/runtime/artifacts/{run_id}/files/{filename}": {"get", "head", "delete"},
        "/runtime/artifacts/{run_id}/files/{filename}/promote": {"post"},
        "/runtime/artifacts/{run_id}/files/{filename}/link": {"post"},
        "/runtime/artifacts/{run_id}/archive": {"get"},
        "/runtime/events": {"get"},
        "/runtime/sweep": {"post"},
        "/runtime/library": {"get", "post"},
        "/runtime/library/{name}": {"delete", "get", "head"},
        "/runtime/stats": {"get"},
        "/healthz": {"get"},
        "/metrics": {"get"},
    }
    assert {p: set(ops) for p, ops in paths.items()} == expected
    schemas = doc["components"]["schemas"]
    assert {"RunMetadata", "ArtifactEntry", "ArtifactList", "KeepBody", "LibraryEntry",
            "LibraryList", "SweepResult", "ErrorDetail", "LinkAnswer"} <= set(schemas)
    assert schemas["KeepBody"]["additionalProperties"] is False


def test_page_and_static_files(store: Store, tmp_path: Path) -> None:
    """GET / is the page's index.html and /static/* its files, under the page's strict CSP."""
    static = tmp_path / "static"
    (static / "js").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>promoter</title>")
    (static / "js" / "app.js").write_text("export {};")
    client = client_for(store, static_dir=static)
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == PAGE_CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in PAGE_CSP
    js = client.get("/static/js/app.js")
    assert js.status_code == 200
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert client.get("/static/js/app.js",
                      headers={"If-None-Match": js.headers["etag"]}).status_code == 304
    assert client.get("/static/missing.css").status_code == 404
    assert client.head("/").status_code == 200


def test_packaged_page_is_served_if_present(client: WebClient) -> None:
    """The packaged page, once its files exist, is served at / as HTML with the page CSP."""
    r = client.get("/")
    if r.status_code == 404:
        pytest.skip("promoter/web/static/index.html is not there yet")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == PAGE_CSP


# -- errors and logs ---------------------------------------------------------------------


def test_unexpected_errors_are_a_generic_500(client: WebClient, store: Store,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception is a 500 with a generic sentence; the details go to the log only."""

    def boom(run_id: str) -> None:
        raise RuntimeError("/very/secret/path exploded")

    monkeypatch.setattr(store, "get_run", boom)
    with LogCapture() as logs:
        r = client.get("/runtime/artifacts/run-a")
    assert r.status_code == 500
    assert r.json() == {"detail": "The server met an unexpected error; its log has the details."}
    assert "secret" not in r.text
    [error] = logs.events("http.error")
    assert "exploded" in error["exception"]
    [line] = logs.events("http.request")
    assert line["status"] == 500


def test_one_request_log_line_per_request(client: WebClient) -> None:
    """Every request logs one http.request line: method, route template, status, time, client."""
    with LogCapture() as logs:
        client.get("/runtime/artifacts/run-a/files/plot.png")
        client.get("/healthz", headers={"Host": "evil.example"})
    first, second = logs.events("http.request")
    assert first["method"] == "GET"
    assert first["route"] == "/runtime/artifacts/{run_id}/files/{filename:path}"
    assert first["status"] == 200
    assert first["client"] == "testclient"
    assert isinstance(first["duration_ms"], float)
    assert (second["route"], second["status"]) == ("/healthz", 400)


def test_unknown_route_and_method(client: WebClient) -> None:
    """An unknown path is 404 and a wrong method 405, both as {"detail": ...}."""
    r = client.get("/runtime/nothing")
    assert r.status_code == 404
    assert set(r.json()) == {"detail"}
    r = client.put("/runtime/artifacts/run-a", headers=CSRF)
    assert r.status_code == 405
    assert set(r.json()) == {"detail"}


def test_sub_second_list_poll_is_cheap_after_a_write(store: Store, tmp_path: Path) -> None:
    """A file promoted after a poll shows in the next poll (the page follows within 2 s)."""
    clock = FakeClock()
    store.clock = clock
    populate(store, tmp_path, "live", {"a.txt": b"1"})
    client = client_for(store)
    etag = client.get("/runtime/artifacts").headers["etag"]
    write_session_file(tmp_path, "live", "b.txt", b"2")
    clock.advance(seconds=1)
    store.promote_files("live", ["b.txt"])
    r = client.get("/runtime/artifacts", headers={"If-None-Match": etag})
    assert r.status_code == 200
    assert len(r.json()["artifacts"][0]["metadata"]["artifacts"]) == 2


# -- the lean file path ------------------------------------------------------------------


def test_lean_file_path_answers_as_the_fastapi_route_does(client: WebClient) -> None:
    """A query only FastAPI can judge goes to the route, which answers the same headers."""
    lean = client.get("/runtime/artifacts/run-a/files/plot.png?download=yes")
    routed = client.get("/runtime/artifacts/run-a/files/plot.png?download=yes&download=yes")
    assert lean.status_code == routed.status_code == 200
    assert lean.content == routed.content
    assert {k: v for k, v in lean.headers.items() if k != "date"} == \
        {k: v for k, v in routed.headers.items() if k != "date"}
    bad = client.get("/runtime/artifacts/run-a/files/plot.png?view=maybe")
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("Invalid query parameter view")
    other = client.get("/runtime/artifacts/run-a/files/plot.png?unrelated=1")
    assert other.status_code == 200


def test_parse_flags() -> None:
    """view and download read as pydantic reads booleans; anything odd is left to FastAPI."""
    from promoter.web.fastpath import parse_flags

    assert parse_flags(b"") == (False, False)
    assert parse_flags(b"view=1") == (True, False)
    assert parse_flags(b"view=TRUE&download=on") == (True, True)
    assert parse_flags(b"download=0&x=y") == (False, False)
    assert parse_flags(b"view=maybe") is None
    assert parse_flags(b"view=1&view=0") is None
    assert parse_flags(b"view=") is None


def test_a_rendered_list_is_reused_for_half_a_second(store: Store, tmp_path: Path) -> None:
    """Pollers share one rendering for ttl_s; a change behind the server shows after it."""
    from promoter.web.listing import RunLister

    now = [100.0]
    lister = RunLister(store, ttl_s=0.5, monotonic=lambda: now[0])
    populate(store, tmp_path, "one", {"a.txt": b"1"})
    first = lister.render("all", None)
    populate(store, tmp_path, "two", {"a.txt": b"2"})
    now[0] += 0.4
    assert lister.render("all", None) is first
    now[0] += 0.2
    assert lister.render("all", None).etag != first.etag


def test_changes_through_the_server_show_at_once(store: Store, tmp_path: Path) -> None:
    """With the list reused between polls, a delete or keep made over HTTP shows immediately."""
    populate(store, tmp_path, "one", {"a.txt": b"1"})
    populate(store, tmp_path, "two", {"a.txt": b"2"})
    client = client_for(store, list_ttl_s=60.0)
    etag = client.get("/runtime/artifacts").headers["etag"]
    assert client.patch("/runtime/artifacts/one", json={"keep": True},
                        headers=CSRF).status_code == 200
    kept = client.get("/runtime/artifacts", headers={"If-None-Match": etag})
    assert kept.status_code == 200
    assert client.delete("/runtime/artifacts/two", headers=CSRF).status_code == 204
    assert [i["run_id"] for i in client.get("/runtime/artifacts").json()["artifacts"]] == ["one"]
    assert client.delete("/runtime/artifacts/one/files/a.txt", headers=CSRF).status_code == 204
    assert client.get("/runtime/artifacts").json()["artifacts"][0]["metadata"]["artifacts"] == []
