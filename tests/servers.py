"""Test helpers for the servers the tests start (serve, watch --serve): a free loopback port, waiting until a
process listens on it, and Debian's chromium for the browser tests."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing holds now (TCP, or UDP with ``socket.SOCK_DGRAM``)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60.0) -> None:
    """Until ``proc`` accepts connections on 127.0.0.1:``port``; fails naming ``what`` if it exits or takes longer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, f"{what} did not start"
            time.sleep(0.1)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("the browser tests need Debian's chromium: apt-get install chromium (.ci/run does)")
    return found
