"""The Prefect API a command reports to: the configured one, else a temporary server of its own.

This module imports no Prefect at import time: the temporary server's process imports it to start
(multiprocessing's spawn imports the target's module in the new process), and a command starts the server
(`start_early`) before it imports Prefect itself, so the two imports run side by side.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator


def _serve_api(port: int, environment: dict[str, str]) -> None:
    """The temporary server's process: Prefect's API application under uvicorn, as Prefect runs it."""
    os.environ.update(environment)
    import uvicorn

    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port, log_level="error")


class TemporaryAPI:
    """A Prefect server for one command, started in the background (`wait()` blocks until it answers).

    Prefect starts the same server itself when no API is configured, but only after importing the
    server's whole application into the calling process, and it blocks until the server answers:
    started here, the server boots while the Dask cluster starts, and the command imports none of it.
    Its settings are those Prefect gives its own (prefect.server.api.server.SubprocessASGIServer).
    """

    def __init__(self, environment: dict[str, str] | None = None):
        """`environment`: settings the server's process gets beyond this process's environment (which it
        inherits), for settings made in this process rather than in its environment or profile."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        environment = dict(environment or {})
        environment |= {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        self.process = multiprocessing.get_context("spawn").Process(
            target=_serve_api, args=(self.port, environment), name="prefect-temporary-server", daemon=True
        )
        self.process.start()

    def wait(self) -> None:
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        deadline = time.monotonic() + PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        while time.monotonic() < deadline:
            if not self.process.is_alive():
                raise RuntimeError(f"the temporary Prefect server exited with code {self.process.exitcode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                if response.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the temporary Prefect server did not answer on {self.url} in time")

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def start_early() -> TemporaryAPI | None:
    """A temporary server started before this process imports Prefect (which takes seconds), unless the
    environment names an API; `prefect_api(early=...)` adopts it, or stops it when a profile names one."""
    return None if os.environ.get("PREFECT_API_URL") else TemporaryAPI()


@contextlib.contextmanager
def prefect_api(early: TemporaryAPI | None = None) -> Iterator[Callable[[], None]]:
    """The Prefect API for a command: the configured one (PREFECT_API_URL), else a temporary server
    started in the background for the block (`early`, when one was started already). Yields a function
    that waits until the API answers. The temporary server is stopped whatever happens, from the first line."""
    server = early
    try:
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
            get_current_settings,
            temporary_settings,
        )

        if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
            if server is not None:
                server.stop()  # now: it would take cores from the command for nothing
                server = None
            yield lambda: None
            return
        server = server or TemporaryAPI(get_current_settings().to_environment_variables(exclude_unset=True))
        # no flow run heartbeats: they tell a long-lived server which runs crashed, and this one ends with the
        # command; their thread also holds the end of every flow run for up to a second
        with temporary_settings(updates={PREFECT_API_URL: server.url, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": None}):
            try:
                yield server.wait
            finally:
                _drain_to_api()
    finally:
        if server is not None:
            server.stop()


def _drain_to_api(timeout: float = 10.0) -> None:
    """Send the logs and events still queued for the API before it stops: otherwise their workers retry a
    stopped server at exit, for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)
