"""A real Prefect server and a ``vegan serve``-style runner, as subprocesses on loopback.

Why not ``prefect_test_harness``: it runs the API in-process, while these tests check
what a user gets: a ``prefect server start`` process (with the UI), deployments registered
over HTTP by another process, and flow runs executed by that process's runner.

Fixtures ``prefect_server`` and ``served_flows`` are module-scoped; a test module imports
them (``from prefect_server import prefect_server, served_flows``) and may override
``serve_code`` to choose what is served.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment of a Prefect process isolated in ``home`` (settings, SQLite database)."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PREFECT_PROFILES_PATH", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM then SIGKILL the process group we created for ``proc`` (it has children).

    Not SIGINT: a test run started in the background inherits SIGINT ignored.
    """
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


@dataclass
class PrefectServer:
    url: str
    home: Path
    log: Path
    proc: subprocess.Popen

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def start_server(home: Path, timeout: float = 180) -> PrefectServer:
    """``prefect server start`` on a free loopback port; returns once /api/health answers."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            # The UI's JavaScript calls the API at this URL (default: port 4200).
            env={**prefect_env(home), "PREFECT_UI_API_URL": f"{url}/api"},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
            start_new_session=True,
        )
    server = PrefectServer(url, home, log, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    _stop(proc)
    raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{_tail(log)}")


def start_serve(server: PrefectServer, code: str, log: Path) -> subprocess.Popen:
    """Run ``code`` (which calls ``prefect.serve``/``serve_deployments``) against ``server``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code],
            env=prefect_env(server.home, server.api_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )


def wait_for_deployments(
    server: PrefectServer, names: list[str], proc: subprocess.Popen, log: Path, timeout: float = 180
) -> None:
    """Block until every ``flow-name/deployment-name`` is registered (the runner is then polling)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    pending = list(names)
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        with get_client(sync_client=True) as client:
            while pending and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve process exited with {proc.returncode}:\n{_tail(log)}")
                try:
                    client.read_deployment_by_name(pending[0])
                    pending.pop(0)
                    continue
                except ObjectNotFound:
                    time.sleep(0.5)
    if pending:
        raise RuntimeError(f"deployments {pending} not registered after {timeout}s:\n{_tail(log)}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server (API + UI) on loopback, with its own PREFECT_HOME and database."""
    server = start_server(tmp_path_factory.mktemp("prefect-home"))
    try:
        yield server
    finally:
        _stop(server.proc)


@pytest.fixture(scope="module")
def serve_code() -> tuple[str, list[str]]:
    """What ``served_flows`` runs: Python code and the deployments it registers.

    The default is what ``vegan serve`` does (all flows, tiny preset); override it in a
    test module to serve something else.
    """
    from flows.deploy import TARGETS

    names = [f"{t.load().name}/tiny" for t in TARGETS]
    return "from flows.deploy import serve_deployments; serve_deployments('tiny')", names


@pytest.fixture(scope="module")
def served_flows(prefect_server, serve_code, tmp_path_factory):
    """A serve process registered with ``prefect_server``; yields (server, deployment names)."""
    code, names = serve_code
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = start_serve(prefect_server, code, log)
    try:
        wait_for_deployments(prefect_server, names, proc, log)
        yield prefect_server, names
    finally:
        _stop(proc)
