"""The start-up probe refuses a store that ignores conditional writes (DESIGN §10): the real
SeaweedFS behind a proxy that answers its 412s with 200, as such a store would."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from s3_server import S3Server
from s3_store_helpers import s3_toml

from promoter.cli import main

pytest_plugins = ("s3_fixtures",)
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def _liar(upstream: str) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Liar(BaseHTTPRequestHandler):
        """Forwards each request unchanged (Host too: it is signed); a 412 becomes a 200."""

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items()
                                      if k.lower() not in HOP})
                answer = conn.getresponse()
                data = answer.read()
                if answer.status == 412:  # the lie: "written"
                    self.send_response(200)
                    self.send_header("ETag", '"' + "0" * 32 + '"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP | {"content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay  # noqa: N815 (http.server)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads promoter's output, not the proxy's."""

    return Liar


@pytest.fixture
def lying_endpoint(s3_server: S3Server) -> Iterator[str]:
    """A loopback proxy in front of the real server that ignores conditions."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _liar(s3_server.endpoint))
    thread = threading.Thread(target=server.serve_forever, name="lying-proxy")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_store_that_ignores_conditions_is_refused_with_one_line(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        lying_endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every request goes through, but a conditional PUT that should fail "succeeds": the
    probe sees it and the command stops with exit 2 and one line; the same bucket straight
    from the server passes."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(s3_toml(s3_server, s3_bucket, s3_prefix, root=str(tmp_path))
                   .replace(s3_server.endpoint, lying_endpoint))
    code = main(["ls", "--config", str(cfg)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "ignores If-None-Match" in err and lying_endpoint in err
    cfg.write_text(s3_toml(s3_server, s3_bucket, s3_prefix, root=str(tmp_path)))
    assert main(["ls", "--config", str(cfg)]) == 0
    assert "no runs" in capsys.readouterr().out
