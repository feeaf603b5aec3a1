"""A moto S3 server in a real subprocess on 127.0.0.1, which can be stopped and restarted on its port.

    server = S3Server().start()     # free port; waits until it answers HTTP
    server.endpoint_url             # http://127.0.0.1:<port>
    server.stop(); server.start()   # an outage: the process is gone, then back on the same port

moto keeps its state in memory, so a plain restart would lose every bucket. With `persist=True`
(the default) the server records each request it handles to `<state_dir>/requests.jsonl` (moto's
recorder), and a restarted server replays that recording *before* it binds its port: buckets and
objects survive a stop/start, and no client can reach the server while it is half-restored. So a
fault test may stop the server at any moment, mid-run, and needs no re-creation of buckets.
Replay re-executes every recorded request, so the restart time grows with the traffic so far
(tests only; benchmarks use `persist=False`).

Fault options (for tests of what the store must not depend on):
- `ignore_conditional_writes=True`: the server drops `If-None-Match` / `If-Match` from every request
  before moto sees them, and so overwrites where S3 would answer 412, as some S3-compatible
  servers do;
- `hold=(regex, seconds)`: a PUT whose key matches is stored, then its response is held back for
  that long, so a test can kill the writer while it waits (the object is there, the writer does
  not know it);
- `fail_puts=N`: the first N PUTs of objects are stored, then answered 500 InternalError (a reply lost on
  the way back: the client's retry finds the object there);
- every PUT is logged to `<state_dir>/puts.log` as `PUT <status> <path>` once it is stored.

Run as a script, this module is that server process (`moto_server`'s own setup plus the replay):
    python tests/s3server.py --port PORT [--recording FILE] [--ignore-conditional-writes] [--hold REGEX SECONDS]
                              [--fail-puts N]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1, drawn from below the kernel's ephemeral range and above
    Ray's worker ports (10002–19999): a port picked from the ephemeral range (what binding port 0
    gives) can be taken, before the test binds it, by any of the outgoing connections a starting Ray
    cluster opens (a Serve proxy once failed to bind that way). All are held open until every one is
    picked, so none is handed out twice."""
    low, high = _PICK_RANGE
    sockets: list[socket.socket] = []
    try:
        for port in random.sample(range(low, high), high - low):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
            if len(sockets) == n:
                return [s.getsockname()[1] for s in sockets]
        raise RuntimeError(f"fewer than {n} free ports in {low}..{high - 1} on 127.0.0.1")
    finally:
        for s in sockets:
            s.close()


def _pick_range() -> tuple[int, int]:
    """[low, high) of the ports `free_ports` draws from: 20000 up to the start of the kernel's
    ephemeral range (Linux's `ip_local_port_range`; 32768 where it cannot be read)."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    if ephemeral_low - 20000 < 1000:
        raise RuntimeError(f"the ephemeral port range starts at {ephemeral_low}: no room to pick test ports "
                           "between Ray's worker ports (≤ 19999) and it")
    return 20000, ephemeral_low


_PICK_RANGE = _pick_range()


class S3Server:
    """A moto S3 server subprocess bound to 127.0.0.1; see the module docstring."""

    def __init__(self, port: int | None = None, persist: bool = True, state_dir: str | Path | None = None,
                 ignore_conditional_writes: bool = False, hold: tuple[str, float] | None = None, fail_puts: int = 0):
        """`state_dir` holds `server.log`, `puts.log` and (with `persist`) the recording; default a new
        temp dir. The fault options are the module docstring's."""
        self.port = port or free_port()
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="moto-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.recording = self.state_dir / "requests.jsonl" if persist else None
        self.log = self.state_dir / "server.log"
        self.puts = self.state_dir / "puts.log"
        self.ignore_conditional_writes, self.hold, self.fail_puts = ignore_conditional_writes, hold, fail_puts
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "S3Server":
        """Start the server (replaying the recording, if any) and wait until it answers HTTP."""
        cmd = [sys.executable, __file__, "--port", str(self.port)]
        if self.recording is not None:
            cmd += ["--recording", str(self.recording)]
        if self.ignore_conditional_writes:
            cmd.append("--ignore-conditional-writes")
        if self.hold is not None:
            cmd += ["--hold", self.hold[0], str(self.hold[1])]
        cmd += ["--puts", str(self.puts), "--fail-puts", str(self.fail_puts)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url} within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        """Terminate the server process (clients then get connection refused)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _replay(app, recording: Path) -> int:
    """Re-apply the recorded requests to a fresh moto app in-process; returns how many.

    A multipart upload gets a new random UploadId when it is replayed: the recorded parts and the
    completion name the old one, so each old id is mapped to the new id of the same key's latest
    replayed CreateMultipartUpload."""
    from werkzeug.test import Client

    client, count = Client(app), 0
    new_upload: dict[str, str] = {}  # path → UploadId of its latest replayed CreateMultipartUpload
    renamed: dict[str, str] = {}  # recorded UploadId → replayed one
    for line in recording.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a hard stop
        body = base64.b64decode(entry["body"]) if entry.get("body_encoded") else (entry.get("body") or b"")
        headers = {k: v for k, v in entry["headers"].items() if k.lower() != "transfer-encoding"}
        url = urlsplit(entry["url"])
        query = url.query
        old = re.search(r"(?:^|&)uploadId=([^&]+)", query)
        if old:
            renamed.setdefault(old[1], new_upload.get(url.path, old[1]))
            query = query.replace(f"uploadId={old[1]}", f"uploadId={renamed[old[1]]}")
        reply = client.open(url.path, method=entry["method"], query_string=query, headers=headers, data=body)
        started = re.search(rb"<UploadId>([^<]+)</UploadId>", reply.data) if entry["method"] == "POST" else None
        if started and re.search(r"(?:^|&)uploads(?:=|&|$)", query):
            new_upload[url.path] = started[1].decode()
        count += 1
    return count


def _s3_compatible(app):
    """moto 5.2 names CompleteMultipartUpload's XML root `CompleteMultipartUploadResponse`; S3's is
    `CompleteMultipartUploadResult`, and pyarrow's S3 client (Ray Tune's storage) takes any other
    root for an error embedded in the 200 response. This WSGI wrapper renames it."""

    def wrapped(environ, start_response):
        if environ["REQUEST_METHOD"] != "POST" or "uploadId=" not in environ.get("QUERY_STRING", ""):
            return app(environ, start_response)
        captured = {}
        body = b"".join(app(environ, lambda status, headers, exc_info=None: captured.update(s=status, h=headers)))
        body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
        start_response(captured["s"], [(k, str(len(body)) if k.lower() == "content-length" else v)
                                       for k, v in captured["h"]])
        return [body]

    return wrapped


def _faults(app, puts: Path, ignore_conditional_writes: bool, hold: tuple[str, float] | None, fail_puts: int):
    """WSGI wrapper of the fault options (module docstring): strip conditions, log PUTs, hold or lose replies."""
    pattern = re.compile(hold[0]) if hold else None
    failures = {"left": fail_puts}

    def wrapped(environ, start_response):
        if ignore_conditional_writes:
            environ.pop("HTTP_IF_NONE_MATCH", None)
            environ.pop("HTTP_IF_MATCH", None)
        if environ["REQUEST_METHOD"] != "PUT":
            return app(environ, start_response)
        captured = {}
        body = b"".join(app(environ, lambda status, headers, exc_info=None: captured.update(s=status, h=headers)))
        path = environ.get("PATH_INFO", "")
        with open(puts, "a") as log:
            log.write(f"PUT {captured['s'].split()[0]} {path}\n")
        if pattern is not None and pattern.search(path) and captured["s"].startswith("200"):
            time.sleep(hold[1])
        if failures["left"] > 0 and captured["s"].startswith("200") and path.count("/") >= 2:  # objects only
            failures["left"] -= 1
            error = b"<Error><Code>InternalError</Code><Message>reply lost (test fault)</Message></Error>"
            start_response("500 Internal Server Error", [("Content-Type", "application/xml"),
                                                         ("Content-Length", str(len(error)))])
            return [error]
        start_response(captured["s"], captured["h"])
        return [body]

    return wrapped


def _serve(port: int, recording: str | None, puts: str | None = None, ignore_conditional_writes: bool = False,
           hold: tuple[str, float] | None = None, fail_puts: int = 0) -> None:
    if recording:
        os.environ["MOTO_RECORDER_FILEPATH"] = recording
    from moto.moto_api import recorder
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    if recording and Path(recording).exists():
        with open(recording, "rb+") as f:  # a hard stop may have cut the last line: end it
            if f.seek(0, 2) and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                f.write(b"\n")
        print(f"replayed {_replay(app, Path(recording))} recorded requests", flush=True)
    if recording:
        recorder.start_recording()
    app = _s3_compatible(app)
    if puts:
        app = _faults(app, Path(puts), ignore_conditional_writes, hold, fail_puts)
    run_simple("127.0.0.1", port, app, threaded=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="moto S3 server on 127.0.0.1 with replayed state")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--recording", default=None)
    parser.add_argument("--puts", default=None, help="log every PUT to this file")
    parser.add_argument("--ignore-conditional-writes", action="store_true")
    parser.add_argument("--hold", nargs=2, metavar=("REGEX", "SECONDS"), default=None)
    parser.add_argument("--fail-puts", type=int, default=0)
    args = parser.parse_args()
    hold = (args.hold[0], float(args.hold[1])) if args.hold else None
    _serve(args.port, args.recording, args.puts, args.ignore_conditional_writes, hold, args.fail_puts)
