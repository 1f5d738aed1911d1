"""schemathesis against /openapi.json: no generated request makes the server fail (DESIGN §7).

schemathesis generates the requests from the app's own OpenAPI document; they
are sent through the same in-process client as the other web tests.
(schemathesis' own pytest loader and ASGI client are not used: the lazy
fixture loader fails under pytest 9, and its ASGI client keeps a process-wide
event-loop thread that the suite's thread-leak guard rightly refuses.)
Bounded: a few examples an operation, so the whole run stays within seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings

from promoter.web import create_app
from tests.web_helpers import BASE, CSRF, WebClient, make_store, populate

EXAMPLES = 20


def _file_value(value: Any) -> Any:
    """requests accepts (None, 0) as a form field; httpx wants bytes or str contents."""
    if isinstance(value, tuple):
        head, content, *rest = value
        if not isinstance(content, (bytes, str)):
            content = json.dumps(content) if isinstance(content, (dict, list)) else str(content)
        return (head, content, *rest)
    return value


def _send(client: WebClient, case: schemathesis.Case) -> httpx.Response:
    """A schemathesis case (requests-style keyword arguments) sent with httpx."""
    kwargs: dict[str, Any] = case.as_transport_kwargs(base_url=BASE, headers=CSRF)
    request: dict[str, Any] = {"headers": {k: str(v) for k, v in kwargs["headers"].items()},
                               "params": kwargs.get("params")}
    if kwargs.get("cookies"):
        request["cookies"] = kwargs["cookies"]
    if kwargs.get("json") is not None:
        request["json"] = kwargs["json"]
    data = kwargs.get("data")
    if isinstance(data, (bytes, str)):
        request["content"] = data
    elif data:
        request["data"] = data
    if kwargs.get("files"):
        request["files"] = [(name, _file_value(value)) for name, value in kwargs["files"]]
    return client.request(kwargs["method"], kwargs["url"], **request)


def test_no_generated_request_is_a_server_error(tmp_path: Path) -> None:
    """Whatever schemathesis sends to any operation, with the CSRF header, no answer is a 5xx."""
    store = make_store(tmp_path, http={"max_upload_bytes": 4096})
    populate(store, tmp_path, "run-1", {"a.txt": b"hello", "sub/b.png": b"png"})
    (tmp_path / "library" / "lib.csv").write_bytes(b"a,b\n")
    app = create_app(store.config, store)
    client = WebClient(app)
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    seen: list[str] = []
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        seen.append(operation.label)
        if operation.path == "/runtime/events":
            continue  # an endless stream: tests/test_events.py drives it over a real socket

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = _send(client, case)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} "
                                f"{response.text[:200]}")
            assert response.status_code < 500, failures[-1]
            if response.status_code >= 400 and response.content:
                assert set(response.json()) >= {"detail"}

        check()
    assert len(seen) == 20, seen  # every operation of DESIGN §7's table
    assert not failures
