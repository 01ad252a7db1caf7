"""A local S3-compatible server for the suite and the store benchmark: moto's standalone server on
127.0.0.1, on a free port, in its own process group (so ending it ends its children too). One
copy of the start-up and shut-down that `conftest.s3_server`, `test_store_s3` and
`benchmarks/bench_store.py` share; nothing in dncml knows it is a test server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def moto_server(env: dict[str, str] | None = None, output=subprocess.DEVNULL, timeout: float = 60.0) -> Iterator[str]:
    """`with moto_server() as endpoint:` a running server (`http://127.0.0.1:PORT`) until the
    block ends. env: extra variables for the server (`INITIAL_NO_AUTH_ACTION_COUNT=0` turns on
    its credential checks); output: where its log goes."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT if output is not subprocess.DEVNULL else subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start (exit {server.poll()})") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
