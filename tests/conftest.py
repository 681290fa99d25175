"""Shared fixtures: an isolated Prefect home, a real S3-compatible server on loopback.

With ``VEGAN_STRICT_SKIPS=1`` (set by ``make test``) a skipped test is a failure: on the
machine kind CI uses every test must run, and a missing dataset, browser or package must
turn the run red with its reason instead of shrinking the suite silently.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Prefect reads its settings at import time: isolate it before any test imports it.
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".cache" / "prefect-test"))
if "PYTEST_XDIST_WORKER" in os.environ:  # one home (settings, SQLite database) per pytest-xdist worker
    os.environ["PREFECT_HOME"] = str(Path(os.environ["PREFECT_HOME"]) / os.environ["PYTEST_XDIST_WORKER"])
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


STRICT_SKIPS = os.environ.get("VEGAN_STRICT_SKIPS") == "1"
STRICT_HINT = "install what is missing (e.g. `sudo bash scripts/setup_system.sh`) or unset VEGAN_STRICT_SKIPS"
_skipped_modules: list[str] = []
_XDIST_WORKER = False


def _skip_reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Strict mode: a skipped test (skip(), skipif, a skipping fixture) becomes a failure with its reason."""
    outcome = yield
    report = outcome.get_result()
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, but VEGAN_STRICT_SKIPS=1 requires every test to run: {_skip_reason(report)}\n({STRICT_HINT})"
        )


def pytest_collectreport(report):
    """Strict mode: a module skipped at import (``pytest.importorskip``) fails the session at the end.

    Failing the collection report itself would abort the whole run at collection, so the
    module is recorded here, named in the summary, and the exit status set in sessionfinish.
    Under pytest-xdist this runs in the controller too (workers forward skipped collection
    reports), where the summary and the exit status are made; a worker records nothing.
    """
    if STRICT_SKIPS and report.skipped and not _XDIST_WORKER:
        _skipped_modules.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_configure(config):
    global _XDIST_WORKER
    _XDIST_WORKER = hasattr(config, "workerinput")  # set in the processes pytest-xdist starts


def pytest_terminal_summary(terminalreporter):
    for line in _skipped_modules:
        terminalreporter.write_line(f"FAILED (VEGAN_STRICT_SKIPS=1, module skipped) {line}", red=True)
    if _skipped_modules:
        terminalreporter.write_line(STRICT_HINT, red=True)


def pytest_sessionfinish(session, exitstatus):
    if _skipped_modules and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 with test credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL=endpoint,
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_ENDPOINT_URL",
)


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket; returns (url, storage_options)."""
    import boto3

    name = f"vegan-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}", {"endpoint_url": s3_endpoint}


@pytest.fixture
def benchmark_script():
    """``load(name)``: ``benchmarks/<name>.py`` imported as a module, registered in ``sys.modules``
    (dataclasses look their module up while the class is made)."""
    import importlib.util
    import sys

    def load(name: str):
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load
