"""`GET /runtime/stats` in-process: the figures of a seeded store, the window, errors, access."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from promoter.metadata import RunMetadata
from promoter.stats import StoreStats
from promoter.store import Store
from tests.page_helpers import SeedFile, SeedRun, write_run
from tests.web_helpers import FakeClock, WebClient, client_for, make_store, populate

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY_MIN = 24 * 60


def seed_runs() -> list[SeedRun]:
    """A kept run, one expiring in 23 h, one in 5 days, and one created 40 days ago."""
    return [
        SeedRun("kept-run", "report", "pinned", 3 * DAY_MIN, 7, "completed", True, (
            SeedFile("a.png", "viz", b"P" * 100, 3 * DAY_MIN),
            SeedFile("b.png", "viz", b"Q" * 200, 3 * DAY_MIN))),
        SeedRun("soon-run", "etl", "expires in 23 h", 60, 1, "completed", False, (
            SeedFile("x.csv", "etl", b"1" * 10, 60),
            SeedFile("z.txt", "writer", b"2" * 30, 59))),
        SeedRun("week-run", "etl", "expires in 5 days", 2 * DAY_MIN, 7, "active", False, (
            SeedFile("big.bin", "etl", b"3" * 1000, 2 * DAY_MIN),)),
        SeedRun("old-run", "etl", "outside 30 days", 40 * DAY_MIN, 60, "completed", False, (
            SeedFile("old.txt", "etl", b"4" * 5000, 40 * DAY_MIN),)),
    ]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = make_store(tmp_path, clock=FakeClock(NOW))
    for seed in seed_runs():
        write_run(tmp_path / "artifacts", seed, NOW)
    return store


@pytest.fixture
def client(store: Store) -> WebClient:
    return client_for(store)


def test_stats_of_a_seeded_store(client: WebClient) -> None:
    """Totals, breakdowns, days and largest runs match what was written."""
    r = client.get("/runtime/stats")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    StoreStats.model_validate(body)
    assert set(body) == {"totals", "by_agent", "by_type", "by_workflow", "per_day",
                         "largest_runs", "rejected_by_reason"}
    assert body["totals"] == {"runs": 3, "artifacts": 5, "bytes": 1340, "kept_runs": 1,
                              "kept_bytes": 300, "expiring_24h_bytes": 40,
                              "expiring_7d_bytes": 1040}
    assert body["by_agent"] == [{"key": "etl", "artifacts": 2, "bytes": 1010},
                                {"key": "viz", "artifacts": 2, "bytes": 300},
                                {"key": "writer", "artifacts": 1, "bytes": 30}]
    assert [b["key"] for b in body["by_type"]] == [
        "application/octet-stream", "image/png", "text/plain", "text/csv"]
    assert body["by_workflow"] == [{"key": "etl", "artifacts": 3, "bytes": 1040},
                                   {"key": "report", "artifacts": 2, "bytes": 300}]
    assert [(d["day"], d["bytes"]) for d in body["per_day"]] == [
        ("2026-03-07", 300), ("2026-03-08", 1000), ("2026-03-10", 40)]
    assert body["largest_runs"] == [{"run_id": "week-run", "bytes": 1000},
                                    {"run_id": "kept-run", "bytes": 300},
                                    {"run_id": "soon-run", "bytes": 40}]
    assert body["rejected_by_reason"] == {}


def test_since_widens_and_narrows_the_window(client: WebClient) -> None:
    """since=60d takes in the old run; since=2h keeps only the run created an hour ago."""
    wide = client.get("/runtime/stats", params={"since": "60d"}).json()
    assert (wide["totals"]["runs"], wide["totals"]["bytes"]) == (4, 6340)
    narrow = client.get("/runtime/stats", params={"since": "2h"}).json()
    assert [r["run_id"] for r in narrow["largest_runs"]] == ["soon-run"]


@pytest.mark.parametrize("since", ["0d", "", "30", "1.5d", "1d2h", "30y", "x" * 40, "-1d",
                                   "9999999999d"])
def test_a_bad_since_is_422_with_a_sentence(client: WebClient, since: str) -> None:
    """A window that is not a positive whole number and unit is refused in one sentence."""
    r = client.get("/runtime/stats", params={"since": since})
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], (str, list))
    assert "Traceback" not in r.text


def test_a_changed_run_is_counted_again(store: Store, client: WebClient,
                                        tmp_path: Path) -> None:
    """Rewriting a run's metadata.json changes the figures at the next call (no stale memo)."""
    assert client.get("/runtime/stats").json()["totals"]["kept_runs"] == 1
    path = tmp_path / "artifacts" / "kept-run" / "metadata.json"
    data = json.loads(path.read_text())
    data["keep"] = False
    path.write_text(json.dumps(data))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    totals = client.get("/runtime/stats").json()["totals"]
    assert (totals["kept_runs"], totals["kept_bytes"]) == (0, 0)
    store.delete_run("week-run")
    totals = client.get("/runtime/stats").json()["totals"]
    assert (totals["runs"], totals["bytes"]) == (2, 340)


def test_empty_store_answers_zeros(tmp_path: Path) -> None:
    """A store with no runs answers zeros and empty lists."""
    body = client_for(make_store(tmp_path)).get("/runtime/stats").json()
    assert body["totals"]["runs"] == 0 and body["by_agent"] == [] and body["per_day"] == []


def test_a_refused_session_file_is_counted_by_reason(tmp_path: Path) -> None:
    """A real refusal (a link in output/) reaches rejected_by_reason through the store."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"ok.txt": b"fine"})
    os.symlink("/etc/passwd", tmp_path / "sessions" / "r1" / "output" / "link.txt")
    store.promote_files("r1", ["link.txt"])
    assert [r.filename for r in store.get_run("r1").rejected] == ["link.txt"]
    body = client_for(store).get("/runtime/stats").json()
    assert sum(body["rejected_by_reason"].values()) == 1, body["rejected_by_reason"]


def test_stats_need_the_token(tmp_path: Path) -> None:
    """With http.token_file set, /runtime/stats is 401 without the bearer token, 200 with it."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    store = make_store(tmp_path / "root", http={"token_file": str(token)})
    client = client_for(store)
    assert client.get("/runtime/stats").status_code == 401
    ok = client.get("/runtime/stats", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_openapi_documents_stats(client: WebClient) -> None:
    """/openapi.json has the route, its since query and the StoreStats response model."""
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/runtime/stats"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StoreStats"}
    assert [p["name"] for p in op["parameters"]] == ["since"]
    schemas = doc["components"]["schemas"]
    assert set(schemas["Totals"]["properties"]) == {
        "runs", "artifacts", "bytes", "kept_runs", "kept_bytes", "expiring_24h_bytes",
        "expiring_7d_bytes"}
    assert set(schemas["Bucket"]["required"]) == {"key", "artifacts", "bytes"}


def test_cache_tallies_a_run_again_only_when_its_metadata_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Unchanged metadata objects are not summed again, across windows; a new object is."""
    from promoter import stats as stats_mod
    from promoter.web import insights
    from tests.test_stats import seeded

    calls: list[str] = []

    def counting(meta: RunMetadata) -> stats_mod.RunTally:
        calls.append(meta.run_id)
        return stats_mod.tally_run(meta)

    monkeypatch.setattr(insights, "tally_run", counting)
    cache = insights.StatsCache(ttl_s=0)
    runs = seeded()
    first = cache.compute(runs, NOW, timedelta(days=30))
    assert sorted(calls) == ["kept", "later", "soon", "week"]
    cache.compute(runs, NOW, timedelta(hours=1))  # a narrower window forgets nothing
    assert cache.compute(runs, NOW, timedelta(days=30)) == first
    assert len(calls) == 4
    changed = [runs[0].model_copy(update={"keep": False}), *runs[1:]]
    again = cache.compute(changed, NOW, timedelta(days=30))
    assert calls[4:] == ["kept"] and again.totals.kept_runs == 0


def test_cache_reuses_an_answer_for_its_ttl() -> None:
    """An answer is reused within the TTL, per since value, and built again after it."""
    from promoter.web.insights import StatsCache

    clock = [100.0]
    cache = StatsCache(ttl_s=0.5, monotonic=lambda: clock[0])
    built: list[str] = []

    def build(tag: str) -> bytes:
        built.append(tag)
        return tag.encode()

    assert cache.answer("30d", lambda: build("a")) == b"a"
    assert cache.answer("30d", lambda: build("b")) == b"a"
    assert cache.answer("7d", lambda: build("c")) == b"c"
    clock[0] += 0.5
    assert cache.answer("30d", lambda: build("d")) == b"d"
    assert built == ["a", "c", "d"]



def test_cache_reuses_the_sums_but_not_the_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same runs later: nothing summed again, yet the expiring bytes follow the time."""
    from promoter import stats as stats_mod
    from promoter.web import insights
    from tests.test_stats import seeded

    summaries: list[int] = []

    def counting(chosen: list[RunMetadata], tally: Any) -> stats_mod.StoreStats:
        summaries.append(len(chosen))
        return stats_mod.summarize(chosen, tally)

    monkeypatch.setattr(insights, "summarize", counting)
    cache = insights.StatsCache(ttl_s=0)
    runs = seeded()
    assert cache.compute(runs, NOW, timedelta(days=30)).totals.expiring_24h_bytes == 60
    later = NOW + timedelta(days=4, hours=12)  # "week" now expires within the day
    got = cache.compute(runs, later, timedelta(days=30))
    assert got == stats_mod.compute_stats(runs, later, timedelta(days=30))
    assert got.totals.expiring_24h_bytes == 60 + 1000
    assert summaries == [4]
