"""Static checks of infra/: containers cannot run here, so every file is parsed and cross-checked.

What would otherwise only fail on a cluster: an entrypoint that no longer imports, a
preset default that drifted from vegan/presets.py, a template placeholder without a
variable, a GPU spec that forgot to request a GPU, a compose service that points at a
missing Dockerfile, a project path that differs between the images and the pools.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PROJECT_DIR = "/opt/vegan"  # where the images put the project; pools and pull steps rely on it


def _yaml(rel: str):
    return yaml.safe_load((INFRA / rel).read_text())


def _dockerfile(rel: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (INFRA / rel).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return _yaml("prefect.yaml")


@pytest.fixture(scope="module")
def pools() -> dict[str, dict]:
    return {
        "cpu": json.loads((INFRA / "work-pools/cpu-process.json").read_text()),
        "gpu": json.loads((INFRA / "work-pools/gpu-kubernetes.json").read_text()),
    }


def test_every_infra_file_parses():
    files = [p for p in INFRA.rglob("*") if p.is_file()]
    assert files
    for path in files:
        if path.suffix in (".yaml", ".yml"):
            assert list(yaml.safe_load_all(path.read_text())), path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.name.startswith("Dockerfile.") and not path.name.endswith(".dockerignore"):
            assert _dockerfile(str(path.relative_to(INFRA)))[0][0] in ("FROM", "ARG"), path


# ------------------------------------------------------------------ prefect.yaml
def test_prefect_yaml_deploys_every_flow(prefect_yaml):
    from flows.deploy import TARGETS

    entrypoints = {d["entrypoint"] for d in prefect_yaml["deployments"]}
    assert entrypoints == {t.entrypoint for t in TARGETS}
    names = [(d["entrypoint"], d["name"]) for d in prefect_yaml["deployments"]]
    assert len(names) == len(set(names)), "duplicate deployment"
    pull = prefect_yaml["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == PROJECT_DIR


def test_deployments_come_from_the_registry_and_their_entrypoints_load():
    """One deployment per registered stage (GPU stages marked), each entrypoint loading its own flow."""
    from prefect.flows import load_flow_from_entrypoint

    from flows.deploy import TARGETS, build_deployments
    from vegan.stages.registry import STAGES

    stage_targets = [t for t in TARGETS if t.module == "flows.stages"]
    assert [(t.attr, t.gpu) for t in stage_targets] == [(f"{n}_stage", s.gpu) for n, s in STAGES.items()]
    for module_paths in (False, True):
        deployments = build_deployments("tiny", module_entrypoints=module_paths)
        assert len(deployments) == len(TARGETS)
        for target, deployment in zip(TARGETS, deployments):
            expected = target.module_entrypoint if module_paths else target.file_entrypoint()
            assert deployment.entrypoint == expected
            loaded = load_flow_from_entrypoint(expected)
            assert loaded.name == target.load().name == deployment.flow_name


@pytest.mark.parametrize(
    "entrypoint",
    sorted({d["entrypoint"] for d in _yaml("prefect.yaml")["deployments"]}),
)
def test_entrypoint_loads_and_parameters_validate(entrypoint, prefect_yaml):
    """What a worker does first: load the flow from the entrypoint and validate the parameters."""
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(ROOT / entrypoint))
    assert isinstance(flow, Flow)
    schema = flow.parameters.model_dump()
    assert schema["properties"], "flow has no parameters"
    for deployment in prefect_yaml["deployments"]:
        if deployment["entrypoint"] != entrypoint:
            continue
        params = deployment.get("parameters", {})
        assert set(params) <= set(schema["properties"]), deployment["name"]
        flow.validate_parameters(params)


def test_default_configs_are_the_presets(prefect_yaml):
    """The YAML repeats the presets (it cannot import Python): fail when they drift apart."""
    from vegan.config import PipelineConfig, load_config
    from vegan.presets import PRESETS

    seen = 0
    for deployment in prefect_yaml["deployments"]:
        config = deployment.get("parameters", {}).get("config")
        if config is None:
            continue
        assert config["name"] in PRESETS, deployment["name"]
        assert PipelineConfig.model_validate(config) == load_config(preset=config["name"])
        seen += 1
    assert seen >= 8


def test_nightly_schedule_and_pools(prefect_yaml, pools):
    from prefect.client.schemas.schedules import CronSchedule

    scheduled = [d for d in prefect_yaml["deployments"] if d.get("schedules")]
    assert [d["entrypoint"] for d in scheduled] == ["flows/pipeline.py:aeot_pipeline"]
    for spec in scheduled[0]["schedules"]:
        CronSchedule(cron=spec["cron"], timezone=spec["timezone"])
    used = {d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    assert used == set(pools) == {"cpu", "gpu"}
    for d in prefect_yaml["deployments"]:
        if d["work_pool"]["name"] == "gpu":
            job_vars = d["work_pool"]["job_variables"]
            assert set(job_vars) <= set(pools["gpu"]["variables"]["properties"])
            assert job_vars["gpu_count"] >= 1
    for d in prefect_yaml["deployments"]:
        storage = d["parameters"]["storage"]
        assert storage.startswith("s3://vegan/"), "run folders live in the bucket compose creates"


# -------------------------------------------------------------------- work pools
def _placeholders(obj) -> set[str]:
    found: set[str] = set()
    if isinstance(obj, dict):
        for v in obj.values():
            found |= _placeholders(v)
    elif isinstance(obj, list):
        for v in obj:
            found |= _placeholders(v)
    elif isinstance(obj, str):
        found |= set(re.findall(r"{{\s*([\w.]+)\s*}}", obj))
    return found


@pytest.mark.parametrize("pool", ["cpu", "gpu"])
def test_pool_template_is_consistent(pools, pool):
    template = pools[pool]
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    assert _placeholders(template["job_configuration"]) <= set(variables["properties"])
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    jsonschema.validate(defaults, variables)


def test_process_pool_runs_in_project_dir(pools):
    from prefect.workers.process import ProcessWorker

    assert pools["cpu"]["variables"]["properties"]["working_dir"]["default"] == PROJECT_DIR
    default = ProcessWorker.get_default_base_job_template()
    assert set(pools["cpu"]["job_configuration"]) == set(default["job_configuration"])


def test_gpu_pool_requests_a_gpu(pools):
    template = pools["gpu"]
    manifest = template["job_configuration"]["job_manifest"]
    assert manifest["kind"] == "Job"
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] == 1
    assert container["workingDir"] == PROJECT_DIR
    # The Kubernetes worker's job configuration has exactly these top-level fields.
    assert set(template["job_configuration"]) == {
        "command",
        "env",
        "labels",
        "name",
        "namespace",
        "job_manifest",
        "cluster_config",
        "job_watch_timeout_seconds",
        "pod_watch_timeout_seconds",
        "stream_output",
    }


# -------------------------------------------------------------------------- dask
def test_dask_kubernetes_cluster_has_cpu_and_gpu_workers():
    docs = list(yaml.safe_load_all((INFRA / "dask/kubernetes-cluster.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"DaskCluster", "DaskWorkerGroup"}
    assert all(d["apiVersion"] == "kubernetes.dask.org/v1" for d in docs)
    cluster, gpu = kinds["DaskCluster"], kinds["DaskWorkerGroup"]
    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"]
    service = cluster["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == cluster["metadata"]["name"]
    assert {p["port"] for p in service["ports"]} == {8786, 8787}

    (cpu_worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in cpu_worker["resources"]["limits"]
    (gpu_worker,) = gpu["spec"]["worker"]["spec"]["containers"]
    assert gpu_worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = gpu_worker["args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert "vegan-gpu" in gpu_worker["image"] and "vegan-cpu" in cpu_worker["image"]


def test_dask_jobqueue_config():
    config = _yaml("dask/jobqueue.yaml")["jobqueue"]
    assert set(config) == {"slurm", "pbs"}
    for section in config.values():
        assert {"cores", "memory", "processes", "walltime", "job-script-prologue"} <= set(section)
        assert section["processes"] == 1


def test_dask_jobqueue_config_is_read_by_dask_jobqueue():
    dask_jobqueue = pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed")
    import dask.config

    # merged over dask-jobqueue's own defaults, as dask does when it reads the file from ~/.config/dask
    merged = dask.config.merge({"jobqueue": dask.config.get("jobqueue")}, _yaml("dask/jobqueue.yaml"))
    with dask.config.set(merged):
        with dask_jobqueue.SLURMCluster(scheduler_options={"host": "127.0.0.1"}) as cluster:
            script = cluster.job_script()
    assert "--nthreads 1" in script and "OMP_NUM_THREADS=8" in script


PAUSE_ENV = "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE"


def test_every_dask_worker_spec_turns_the_memory_pause_off():
    """As vegan.cluster.local_cluster: a worker's torch memory never spills, so a paused worker would hang."""
    import dask.config

    values = [_yaml("compose.yaml")["services"]["dask-worker"]["environment"][PAUSE_ENV]]
    for doc in yaml.safe_load_all((INFRA / "dask/kubernetes-cluster.yaml").read_text()):
        for container in doc["spec"]["worker"]["spec"]["containers"]:
            values += [e["value"] for e in container.get("env", []) if e["name"] == PAUSE_ENV] or [None]
    for section in _yaml("dask/jobqueue.yaml")["jobqueue"].values():
        prologue = section["job-script-prologue"]
        exports = dict(line.removeprefix("export ").split("=", 1) for line in prologue if line.startswith("export "))
        values.append(exports.get(PAUSE_ENV))
    assert len(values) == 5 and None not in values  # compose, 2 Kubernetes worker groups, SLURM, PBS
    for value in values:
        assert dask.config.collect_env({PAUSE_ENV: value})["distributed"]["worker"]["memory"]["pause"] is False


# ------------------------------------------------------------------- dockerfiles
@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_installs_the_project(name):
    steps = _dockerfile(f"docker/{name}")
    instrs = [i for i, _ in steps]
    base = next(a for i, a in steps if i == "FROM")
    if name.endswith("gpu"):
        assert base.startswith("nvidia/cuda:")
    assert ("WORKDIR", PROJECT_DIR) in steps
    assert ("COPY", ". .") in steps
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert "pip install --no-deps ." in runs and "import vegan, flows.pipeline" in runs
    assert instrs.index("COPY") < instrs.index("USER")
    assert (INFRA / f"docker/{name}.dockerignore").read_text().count(".venv")


# ----------------------------------------------------------------------- compose
def test_compose_stack():
    compose = _yaml("compose.yaml")
    services = compose["services"]
    assert {
        "prefect-server",
        "postgres",
        "minio",
        "minio-init",
        "dask-scheduler",
        "dask-worker",
        "prefect-worker",
        "deploy",
    } <= set(services)
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        assert set(deps) <= set(services), name
        if "build" in svc:
            context = (INFRA / svc["build"]["context"]).resolve()
            assert context == ROOT and (context / svc["build"]["dockerfile"]).is_file(), name

    worker = services["prefect-worker"]
    cmd = worker["command"]
    assert cmd[cmd.index("--pool") + 1] == "cpu"
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "tcp://dask-scheduler:8786" in services["dask-worker"]["command"]
    assert "local/vegan" in services["minio-init"]["command"][0]
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")

    deploy = shlex.split(services["deploy"]["command"][0])
    for path in ("infra/work-pools/cpu-process.json", "infra/work-pools/gpu-kubernetes.json", "infra/prefect.yaml"):
        assert path in deploy and (ROOT / path).is_file()


def test_readme_covers_every_file():
    readme = (INFRA / "README.md").read_text()
    for path in INFRA.rglob("*"):
        if path.is_file() and path.name != "README.md" and not path.name.endswith(".dockerignore"):
            assert str(path.relative_to(INFRA)) in readme, path
