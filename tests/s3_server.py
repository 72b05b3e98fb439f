"""A real S3 server for the remote copy's tests: moto's server mode, started on 127.0.0.1 (one per
test module: the `s3` fixture in conftest.py).

Clients reach it through a relay on a port of its own, which the tests can close and open again:
`outage()` makes every connection to the endpoint fail (refused, as for a server that is down)
while moto keeps its objects (a restarted moto would start empty, which no real store does).
The endpoint and credentials go to the runs through the environment only (`env`), as a user's do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

# A marker a test looks for in every file a run writes: credentials must never be recorded.
SECRET = f"secret-{uuid.uuid4().hex}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """Forwards TCP connections from its port to `target`; `close()` stops accepting and cuts
    the open connections, `open()` listens again on the same port."""

    def __init__(self, target: int):
        self.target = target
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self.accept, args=(listener,), daemon=True).start()

    def accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.listener is not listener:  # closed while this one was accepted: the outage cuts it too
                    client.close()
                    server.close()
                    return
                self.connections += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            if self.listener is not None:
                # shutdown wakes the thread blocked in accept(): a plain close would leave the
                # port listening (the blocked call holds the socket) and bound at open().
                with contextlib.suppress(OSError):
                    self.listener.shutdown(socket.SHUT_RDWR)
                self.listener.close()
                self.listener = None
            for s in self.connections:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.connections = []


class S3Server:
    """moto's S3 server on 127.0.0.1, behind a Relay; `env` is what a run needs to reach it."""

    def __init__(self):
        self.moto_port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.moto_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.process.kill()
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        self.relay = Relay(self.moto_port)
        self.endpoint = f"http://127.0.0.1:{self.relay.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing-key-id",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            # One attempt per call: the framework retries uploads itself, and a refused start is said at once.
            "AWS_MAX_ATTEMPTS": "1",
        }

    def filesystem(self):
        """An s3fs client of this server (a fresh one: fsspec caches them by their arguments)."""
        import s3fs

        return s3fs.S3FileSystem(
            skip_instance_cache=True,
            key=self.env["AWS_ACCESS_KEY_ID"],
            secret=SECRET,
            endpoint_url=self.endpoint,
        )

    def bucket(self) -> str:
        """A new, empty bucket; its name."""
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The endpoint refuses every connection inside the block."""
        self.relay.close()
        try:
            yield
        finally:
            self.relay.open()

    @contextlib.contextmanager
    def in_environment(self) -> Iterator[None]:
        """`env` in this process's environment (for runs in process), put back after."""
        import s3fs

        saved = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        s3fs.S3FileSystem.clear_instance_cache()  # one made for another module's server would be reused
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            s3fs.S3FileSystem.clear_instance_cache()

    def stop(self) -> None:
        self.relay.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remote_contents(url: str, s3: S3Server | None = None) -> tuple[dict[str, dict], dict[str, bytes], bytes]:
    """What the remote copy at `url` holds, read afresh (no listing cache): its index's entries by
    name, its objects' bytes by name (their sha256), and the index's own bytes. An s3:// URL is
    read through `s3`'s server, any other (file://) as fsspec reads it."""
    import fsspec

    if url.startswith("s3://"):
        fs, root = s3.filesystem(), url.removeprefix("s3://")
    else:
        fs, root = fsspec.core.url_to_fs(url)
    index = fs.cat_file(f"{root}/index.json")
    objects = {Path(p).name: fs.cat_file(p) for p in fs.find(f"{root}/objects")}
    return {e["file"]: e for e in json.loads(index)["files"]}, objects, index


def local_entries(run_dir: Path) -> dict[str, dict]:
    """The run's checkpoints/index.json entries by name."""
    return {e["file"]: e for e in json.loads((run_dir / "checkpoints" / "index.json").read_text())["files"]}
