"""Deployments against a real Prefect server: served by ``vegan serve``'s code, from
infra/prefect.yaml, and on a work pool executed by a process worker.

The runs go through the API exactly as a click in the UI does (create a flow run from
the deployment with parameters), and the assertions read what the run wrote to storage.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from prefect_server import BIN, ROOT, _stop, prefect_env, prefect_server, served_flows  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve_code(tmp_path_factory):
    """``serve_deployments`` as ``vegan serve --cron`` runs it, with a throwaway default storage."""
    from flows.deploy import NIGHTLY_CRON, TARGETS

    storage = tmp_path_factory.mktemp("default-run")
    code = (
        "from flows.deploy import serve_deployments; "
        f"serve_deployments('tiny', storage={str(storage)!r}, cron={NIGHTLY_CRON!r})"
    )
    return code, [f"{t.load().name}/tiny" for t in TARGETS]


@pytest.fixture
def api(prefect_server):  # noqa: F811 - the imported fixture
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


def test_served_pipeline_runs_with_changed_parameter(served_flows, api, tmp_path):  # noqa: F811
    """Parameters set through the API reach the run; ``until`` stops it (the UI test runs it all)."""
    from prefect.deployments import run_deployment

    from vegan.config import load_config

    config = load_config(preset="tiny", overrides=["ae.steps=60", "name=tiny-ui"])
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    flow_run = run_deployment(
        "aeot-pipeline/tiny",
        parameters={"config": config.model_dump(mode="json"), "storage": str(run_dir), "until": "latents"},
        timeout=900,
        poll_interval=2,
    )
    assert flow_run.state.is_completed(), flow_run.state
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["ae"]["steps"] == 60
    assert manifest["config"]["name"] == "tiny-ui"
    done = {name for name, stage in manifest["stages"].items() if stage["status"] == "done"}
    assert done == {"ae", "latents"}
    print(f"pipeline run through the API: {time.monotonic() - t0:.0f} s")


def test_served_deployments_have_forms_defaults_and_schedule(served_flows, api):  # noqa: F811
    from prefect.client.orchestration import get_client

    from vegan.config import load_config

    _, names = served_flows
    with get_client(sync_client=True) as client:
        pipeline = client.read_deployment_by_name("aeot-pipeline/tiny")
        schema = pipeline.parameter_openapi_schema
        assert {"config", "storage", "until"} <= set(schema["properties"])
        assert pipeline.parameters["config"] == load_config(preset="tiny").model_dump(mode="json")
        assert [s.schedule.cron for s in pipeline.schedules] == ["0 2 * * *"]
        for name in names:
            if name != "aeot-pipeline/tiny":
                assert not client.read_deployment_by_name(name).schedules, name
        # The scheduler turns the cron into upcoming runs (fails with SQLAlchemy 2.1: see
        # docs/OPERATIONS.md); they are far enough ahead not to start during the test.
        deadline = time.monotonic() + 60
        scheduled = []
        while not scheduled and time.monotonic() < deadline:
            scheduled = [
                r
                for r in client.read_flow_runs(limit=50)
                if r.deployment_id == pipeline.id and r.state_type.value == "SCHEDULED"
            ]
            time.sleep(1)
        assert scheduled, "the server's scheduler created no runs for the nightly cron"


def _cli(args: list[str], server, timeout: float = 120) -> str:
    proc = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=prefect_env(server.home, server.api_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_prefect_yaml_and_pools_deploy(api):
    """infra/prefect.yaml and the work pool templates as the compose `deploy` service applies them."""
    import yaml
    from prefect.client.orchestration import get_client

    _cli(
        [
            "work-pool",
            "create",
            "cpu",
            "--type",
            "process",
            "--overwrite",
            "--base-job-template",
            "infra/work-pools/cpu-process.json",
        ],
        api,
    )
    _cli(
        [
            "work-pool",
            "create",
            "gpu",
            "--type",
            "kubernetes",
            "--overwrite",
            "--base-job-template",
            "infra/work-pools/gpu-kubernetes.json",
        ],
        api,
    )
    _cli(["--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml"], api, timeout=300)

    spec = yaml.safe_load((ROOT / "infra/prefect.yaml").read_text())["deployments"]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("gpu").base_job_template["variables"]["properties"]["gpu_count"]
        deployed = {(d.entrypoint, d.name): d for d in client.read_deployments() if d.work_pool_name}
        assert {(e["entrypoint"], e["name"]) for e in spec} == set(deployed)
        nightly = client.read_deployment_by_name("aeot-pipeline/mnist-nightly")
        assert nightly.work_pool_name == "gpu"
        assert nightly.job_variables["gpu_count"] == 1
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
        assert nightly.parameters["config"]["data"]["name"] == "mnist"
        assert nightly.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/vegan"


def test_deploy_all_runs_on_a_process_worker(api, tmp_path):
    """``vegan serve --deploy``: module entrypoints, no image, executed by a separate worker."""
    from prefect.deployments import run_deployment

    from flows.deploy import deploy_all
    from vegan.config import load_config

    ids = deploy_all("vegan-test-cpu", api_url=api.api_url, storage=str(tmp_path / "default"))
    assert len(ids) == 8
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "vegan-test-cpu", "--type", "process"],
            env=prefect_env(api.home, api.api_url),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        config = load_config(preset="tiny", overrides=["ae.steps=20"])
        run_dir = tmp_path / "stage-run"
        flow_run = run_deployment(
            "stage-ae/tiny",
            parameters={"config": config.model_dump(mode="json"), "storage": str(run_dir)},
            timeout=600,
            poll_interval=2,
        )
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-4000:]}"
    finally:
        _stop(worker)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["ae"]["steps"] == 20
    assert Path(run_dir / "ae").is_dir()
