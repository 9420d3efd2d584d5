"""A throwaway ``redis-server`` for tests, benchmarks and tutorials of shared state.

    >>> from llmkit.testing.redis_server import RedisServer
    >>> with RedisServer() as server:          # doctest: +SKIP
    ...     client = llmkit.Client(shared_state=server.url)

It runs Debian's (or any) ``redis-server`` binary on a free 127.0.0.1 port with persistence off
(``--save "" --appendonly no``) in a temporary folder, and kills it on ``stop()``. ``stop()`` then
``start()`` again (same port) simulates an outage. ``available()`` says whether the binary exists.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_executable() -> str | None:
    """The ``redis-server`` binary on PATH (or Debian's /usr/bin one), or None."""
    found = shutil.which("redis-server")
    if found is None and os.path.exists("/usr/bin/redis-server"):
        found = "/usr/bin/redis-server"
    return found


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port`` (a free one by default)."""

    def __init__(self, port: int | None = None, executable: str | None = None) -> None:
        exe = executable or redis_executable()
        if exe is None:
            raise FileNotFoundError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        self.executable = exe
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="llmkit-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return redis_executable() is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.command(b"PING").startswith(b"+PONG"):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout:g}s")

    def command(self, line: bytes) -> bytes:
        """Send one inline command (``b"PING"``, ``b"FLUSHALL"``); the first bytes of the answer, or b""."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                conn.sendall(line + b"\r\n")
                return conn.recv(256)
        except OSError:
            return b""

    def flush(self) -> None:
        self.command(b"FLUSHALL")

    def stop(self) -> None:
        """Kill the server (no clean shutdown: this is an outage) and wait for it to exit."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} {'running' if self.running else 'stopped'}>"
