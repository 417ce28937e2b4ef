"""Test helpers for the client, usable on every Python the client supports (3.9+).

- FakeSidecar: the v1 API on a stdlib HTTP server on 127.0.0.1 port 0, with scripted
  answers, a gate that holds /busy answers back, and a log of what it was sent.
- RecordingProxy: a TCP listener that counts the connections it gets (a proxy that
  must never be used).
- A real sidecar in a subprocess: tests/processes.py (SidecarProcess, sidecar_python).
- wait_until (from tests/support.py): poll for a condition with a deadline.

No pytest fixtures here: the client's tests also run without the repository's
conftest (on Pythons the sidecar's test fakes do not support).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Union

ROOT = Path(__file__).parent.parent
# Union, not |: evaluated at run time, on Python 3.9 too.
Answer = Union[tuple[int, bytes], Callable[[dict[str, Any]], tuple[int, bytes]]]  # noqa: UP007
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens


@dataclass
class Seen:
    method: str
    path: str
    body: dict[str, Any]
    authorization: str | None
    pid: int | None = None


@dataclass
class FakeSidecar:
    """Keeps leases like the sidecar (a /busy lease exists from the request's arrival).

    `busy_error`: (status, code) answered to new leases. `scripted`: raw answers
    (status, body bytes) per path, used once each, before the normal behaviour.
    `gate`: when set, /busy answers wait until it is opened (the lease exists meanwhile).
    """

    leases: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    busy_error: tuple[int, str] | None = None
    scripted: dict[str, list[Answer]] = field(default_factory=dict)
    draining: bool = False
    token: str | None = None
    max_concurrent: int = 0
    gate: threading.Event | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def __post_init__(self) -> None:
        fake = self
        self._connections: list[socket.socket] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like aiohttp

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    fake._connections.append(self.connection)

            def do_GET(self) -> None:
                fake._dispatch(self)

            def do_POST(self) -> None:
                fake._dispatch(self)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def __enter__(self) -> FakeSidecar:  # noqa: PYI034  (typing.Self is 3.11+)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            connections, self._connections = self._connections, []
        for connection in connections:  # keep-alive connections end with the server
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def posts(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s.body for s in self.seen if s.path == path]

    def script(self, path: str, answer: Answer) -> None:
        """Answer the next request to `path` with `answer`: (status, body), or a function
        of the request's JSON body that returns one."""
        with self.lock:
            self.scripted.setdefault(path, []).append(answer)

    # ---- the server side ---------------------------------------------------------------

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"raw": raw.decode("utf-8", "replace")}
        auth = handler.headers.get("Authorization")
        with self.lock:
            self.seen.append(Seen(handler.command, handler.path, body, auth))
            scripted = self.scripted.get(handler.path)
            script = scripted.pop(0) if scripted else None
        answer = script(body) if callable(script) else script
        refused = self.token and handler.command == "POST" and auth != f"Bearer {self.token}"
        if handler.path == "/busy" and not refused:
            self._note_busy(body)
        if answer is None:
            if refused:
                answer = _error(401, "Unauthorized", "bad token")
            else:
                answer = self._answer(handler.command, handler.path, body)
        if handler.path == "/busy" and self.gate is not None:
            self.gate.wait(30)
        status, payload = answer
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            pass  # the client went away (a cancelled or interrupted request)

    def _note_busy(self, body: dict[str, Any]) -> None:
        # As the sidecar does: the lease exists as soon as the request is taken.
        lease = body.get("lease", "default")
        with self.lock:
            if self.draining and lease not in self.leases:
                return
            if self.busy_error is not None and self.busy_error[1] != "ProtectionUnavailable":
                return
            self.leases.add(lease)
            self.max_concurrent = max(self.max_concurrent, len(self.leases))

    def _answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        lease = body.get("lease", "default")
        with self.lock:
            count = len(self.leases)
            held = lease in self.leases
            if path == "/busy" and method == "POST":
                if not held and self.draining:
                    return _error(503, "Draining", "the task is stopping", lease, count)
                if self.busy_error is not None:
                    status, code = self.busy_error
                    return _error(status, code, f"scripted {code}", lease, count)
                return 200, _json(
                    {
                        "lease": lease,
                        "protected": True,
                        "expires_at": "2026-11-27T21:30:33.895Z",
                        "leases": count,
                    }
                )
            if path == "/idle" and method == "POST":
                self.leases.discard(lease)
                return 200, _json({"released": held, "leases": len(self.leases)})
            if path == "/drain" and method == "POST":
                self.draining = True
                return 200, _json({"draining": True, "leases": count})
            if path == "/state" and method == "GET":
                return 200, _json(self._state())
            if path == "/healthz" and method == "GET":
                return 200, _json({"status": "ok"})
        return _error(404, "NotFound", path)

    def _state(self) -> dict[str, Any]:
        # As the sidecar: at most 100 leases listed, all of them counted.
        return {
            "busy": bool(self.leases),
            "leases": [
                {"lease": lease, "since": None, "expires_at": None}
                for lease in sorted(self.leases)[:100]
            ],
            "lease_count": len(self.leases),
            "protection": {
                "enabled": bool(self.leases),
                "expires_at": None,
                "backend": "local",
                "last_error": None,
                "calls": 0,
            },
            "draining": self.draining,
            "drain_deadline": None,
        }


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _error(
    status: int, code: str, message: str, lease: str | None = None, leases: int = 0
) -> tuple[int, bytes]:
    doc: dict[str, Any] = {"error": {"code": code, "message": message}}
    if lease is not None:
        doc.update({"lease": lease, "protected": False, "leases": leases})
    return status, _json(doc)


class RecordingProxy:
    """A listener standing in for an HTTP proxy: counts connections, answers 502."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.connections = 0
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            self.connections += 1
            conn.settimeout(1)
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._socket.close()


def dead_proxy_url() -> str:
    """A loopback address nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# Raw (status, body) for RawServer answers that are whole and valid.
def http_answer(status: int, doc: dict[str, Any]) -> bytes:
    body = _json(doc)
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    return (head + "Connection: close\r\n\r\n").encode() + body


class RawServer:
    """A TCP listener on 127.0.0.1 port 0 that plays a sidecar breaking HTTP.

    For each request it calls `respond(connection, path, stop)`, which writes whatever
    bytes it likes (a cut answer, garbage, a slow drip) and returns; the connection is
    closed after it. `stop` is set by close(), so that a drip ends with the test.
    """

    def __init__(self, respond: Callable[[socket.socket, str, threading.Event], None]) -> None:
        self._respond = respond
        self._stop = threading.Event()
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.paths: list[str] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._serve, daemon=True)
        self._accepting.start()

    def __enter__(self) -> RawServer:  # noqa: PYI034  (typing.Self is 3.11+)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next(
                    (
                        int(v)
                        for k, _, v in (x.partition(":") for x in lines[1:])
                        if k.strip().lower() == "content-length"
                    ),
                    0,
                )
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                path = lines[0].split(" ")[1]
                self.paths.append(path)
                self._respond(conn, path, self._stop)
            except OSError:
                pass  # the client gave up: what these tests expect of it

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # wakes the accept() (a close alone does not)
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._accepting.join(10)
        for thread in self._threads:
            thread.join(10)


class StallingSidecar:
    """A sidecar that never answers some paths: a hung one, or a slow one.

    Listens on 127.0.0.1 port 0, reads each request and answers it from `answers`
    (path -> (status, body)); a request for any other path is held open and never
    answered. `outstanding(path)` tells whether such a request is still open on the
    client's side: the client has neither had an answer nor given up on it.
    """

    def __init__(self, answers: dict[str, tuple[int, bytes]] | None = None) -> None:
        self.answers = dict(answers or {})
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.lock = threading.Lock()
        self.held: list[tuple[str, socket.socket]] = []
        self.seen: list[str] = []
        self._open: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def __enter__(self) -> StallingSidecar:  # noqa: PYI034  (typing.Self is 3.11+)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def outstanding(self, path: str) -> bool:
        """Whether a held request for `path` is still open on the client's side."""
        with self.lock:
            held = [conn for held_path, conn in self.held if held_path == path]
        return any(_still_open(conn) for conn in held)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            with self.lock:
                self._open.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:  # keep-alive: one request after the other on this connection
                request_line = reader.readline()
                if not request_line:
                    return
                length = 0
                for line in iter(reader.readline, b"\r\n"):
                    if not line:
                        return
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                reader.read(length)
                path = request_line.split()[1].decode("ascii")
                with self.lock:
                    self.seen.append(path)
                    answer = self.answers.get(path)
                    if answer is None:
                        self.held.append((path, conn))
                if answer is None:
                    return  # held: never answered, closed only by close()
                status, body = answer
                head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                conn.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        except (OSError, ValueError, IndexError):
            return

    def close(self) -> None:
        self._socket.close()
        with self.lock:
            connections, self._open = self._open, []
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.close()


def _still_open(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read and no end of stream: the client is waiting
    except OSError:
        return False
