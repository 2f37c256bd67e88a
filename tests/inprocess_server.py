"""A surge server run in this process (`eSurgeApiServer(engine).fire()` in a thread), for tests.

`serve(engine, **server_options)` is a context manager: it starts `fire()` on a free loopback port, waits
until /health answers 200, yields a `Served` (the server, its base URL, the thread) and shuts it down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time

import httpx


@dataclasses.dataclass
class Served:
    server: object
    url: str
    thread: threading.Thread


@contextlib.contextmanager
def serve(engine, timeout: float = 60.0, **options):
    import surge

    server = surge.eSurgeApiServer(engine, **options)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    thread = threading.Thread(target=server.fire, kwargs={"host": "127.0.0.1", "port": port}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the in-process server did not come up"
            time.sleep(0.1)
        yield Served(server, url, thread)
    finally:
        server.shutdown()
        thread.join(timeout=30)
