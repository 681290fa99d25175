"""A temporary Prefect API server for one ``vegan run``, tied to the life of this process.

Without ``PREFECT_API_URL`` Prefect starts an ephemeral server subprocess; a
``vegan run`` killed with SIGKILL never stops it, and the orphaned uvicorn lives
on. Here the server is started through :func:`popen_tied`, so the kernel kills it
when this process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

# Runs in the child before exec: PR_SET_PDEATHSIG (1) survives execve, so the exec'd
# program gets SIGKILL when the thread that started it (our main thread) dies.
_TIED = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)  # the parent died before prctl took effect
os.execv(sys.argv[2], sys.argv[2:])
"""


def popen_tied(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(args)`` whose process the kernel kills when this process dies (Linux).

    Call it from the main thread: the death signal follows the thread that forks.
    Elsewhere than Linux this is a plain ``Popen``.
    """
    if not sys.platform.startswith("linux"):
        return subprocess.Popen(args, **kwargs)
    return subprocess.Popen([sys.executable, "-c", _TIED, str(os.getpid()), *args], **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _start(log) -> tuple[subprocess.Popen, str]:
    import prefect
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    deadline = time.monotonic() + settings.server.ephemeral.startup_timeout_seconds
    while True:
        port = _free_port()
        proc = popen_tied(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(Path(prefect.__file__).parent.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            # What Prefect's own ephemeral server gets: no UI, the current settings.
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **settings.to_environment_variables(exclude_unset=True),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        api_url = f"http://127.0.0.1:{port}/api"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _healthy(api_url):
                return proc, api_url
            time.sleep(0.2)
        if proc.poll() == 3:  # uvicorn: port taken meanwhile; try another
            continue
        _stop(proc)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"the temporary Prefect server did not start (exit {proc.returncode}): {tail}")


def _drain_prefect_workers() -> None:
    """Send the buffered logs and events while the server still answers (as prefect_test_harness does)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The configured Prefect API (``PREFECT_API_URL``), or a temporary server tied to this process."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    configured = get_current_settings().api.url
    if configured:
        yield configured
        return
    with tempfile.TemporaryFile() as log:
        proc, api_url = _start(log)
        try:
            with temporary_settings({PREFECT_API_URL: api_url}):
                try:
                    yield api_url
                finally:
                    _drain_prefect_workers()
        finally:
            _stop(proc)
