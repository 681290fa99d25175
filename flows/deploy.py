"""Prefect deployments of the vegan flows: serve them here, or register them for work pools.

Two ways to make the flows triggerable from the Prefect UI/API:

* :func:`serve_deployments` (what ``vegan serve`` runs): this process registers every
  deployment and then polls the API, running each flow run as a local subprocess. No work
  pool, no image, no worker: the right thing for a laptop or a single VM.
* :func:`deploy_all` (``vegan serve --deploy``): registers the same deployments against
  work pools (``cpu``: process workers; ``gpu``: Kubernetes jobs requesting a GPU, see
  ``infra/``) and returns. Workers elsewhere execute the runs. No image is built: the
  worker images already ``pip install`` the project, so the entrypoints are module paths
  (``flows.pipeline.aeot_pipeline``) that resolve wherever vegan is installed.

Every deployment is named after the preset of its default parameters
(``aeot-pipeline/tiny``, ``stage-ae/tiny``, ...), and the default ``config`` parameter
is the full preset config, so the UI's "custom run" form starts from real values.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from uuid import UUID

from flows.stages import flow_attr
from vegan.stages.registry import STAGES

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

NIGHTLY_CRON = "0 2 * * *"
"""Example schedule for the full pipeline (02:00 every night, server timezone UTC)."""

DEFAULT_CPU_POOL = "cpu"
DEFAULT_GPU_POOL = "gpu"


@dataclass(frozen=True)
class FlowTarget:
    """One deployable flow: where it lives and how it is deployed."""

    module: str
    attr: str
    gpu: bool = False
    """Training stages that a GPU speeds up; they go to the GPU pool when one is given."""
    pipeline: bool = False
    """The full DAG: the only deployment that gets the (optional) schedule."""

    @property
    def entrypoint(self) -> str:
        """File-path entrypoint, relative to the repository root (as in infra/prefect.yaml)."""
        return f"{self.module.replace('.', '/')}.py:{self.attr}"

    @property
    def module_entrypoint(self) -> str:
        """Module-path entrypoint: resolves wherever the project is installed."""
        return f"{self.module}.{self.attr}"

    def file_entrypoint(self) -> str:
        """File-path entrypoint relative to the working directory, where a served runner resolves it."""
        path = importlib.import_module(self.module).__file__
        return f"{os.path.relpath(path)}:{self.attr}"

    def load(self):
        return getattr(importlib.import_module(self.module), self.attr)


TARGETS: tuple[FlowTarget, ...] = (
    FlowTarget("flows.pipeline", "aeot_pipeline", pipeline=True),
    *(FlowTarget("flows.stages", flow_attr(name), gpu=stage.gpu) for name, stage in STAGES.items()),
    FlowTarget("flows.compare", "compare_models_flow"),
)
"""The full pipeline, one flow per registered stage, and the model comparison."""


def build_deployments(
    preset: str = "tiny",
    *,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    storage: str | None = None,
    cron: str | None = None,
    work_pool: str | None = None,
    gpu_work_pool: str | None = None,
    module_entrypoints: bool = False,
    tags: tuple[str, ...] = ("vegan",),
    targets: tuple[FlowTarget, ...] = TARGETS,
) -> list["RunnerDeployment"]:
    """Deployment objects for every flow, not yet registered anywhere.

    ``preset``/``config_path``/``overrides`` build the default ``config`` parameter exactly
    as ``vegan run`` does; ``storage`` (any fsspec URL) is the default run folder, shared by
    the pipeline and the stage flows so that a stage deployment picks up where another
    stopped. A flow gets only the defaults it has parameters for (the compare flow takes
    no ``config``). ``cron`` schedules the full pipeline only: stages are triggered by hand.
    """
    import inspect

    from vegan.config import load_config

    config = load_config(preset=preset, path=config_path, overrides=overrides)
    defaults: dict = {"config": config.model_dump(mode="json")}
    if storage is not None:
        defaults["storage"] = storage

    deployments = []
    for target in targets:
        flow = target.load()
        accepted = inspect.signature(flow.fn).parameters
        pool = (gpu_work_pool if target.gpu and gpu_work_pool else work_pool) if work_pool else None
        deployment = flow.to_deployment(
            name=config.name,
            parameters={k: v for k, v in defaults.items() if k in accepted},
            cron=cron if target.pipeline and cron else None,
            tags=[*tags, config.name, *(["gpu"] if pool and pool == gpu_work_pool else [])],
            work_pool_name=pool,
        )
        # Stage flows are made from the registry, so Prefect cannot derive their entrypoints from
        # the function name: every deployment gets the module attribute the flow is bound to.
        deployment.entrypoint = target.module_entrypoint if module_entrypoints else target.file_entrypoint()
        deployments.append(deployment)
    return deployments


@contextlib.contextmanager
def _api(api_url: str | None) -> Iterator[None]:
    """Point Prefect at ``api_url`` for the duration of the block (None: keep the profile's)."""
    if api_url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        yield


def serve_deployments(
    preset: str = "tiny",
    *,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    storage: str | None = None,
    cron: str | None = None,
    api_url: str | None = None,
    limit: int | None = None,
) -> None:
    """Register all deployments and run their flow runs here until interrupted (blocking).

    ``limit`` caps concurrent flow runs; the default (None) lets the UI start several, which
    is what you want for stage flows on different run folders. On Ctrl-C the schedules are
    paused, so a stopped server does not pile up late runs.
    """
    from prefect import serve

    deployments = build_deployments(preset, config_path=config_path, overrides=overrides, storage=storage, cron=cron)
    with _api(api_url):
        serve(*deployments, limit=limit)


def _ensure_pool(client, name: str, pool_type: str) -> None:
    """Create a process pool when missing; other pool types need their infra/ template."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_work_pool(name)
    except ObjectNotFound:
        if pool_type != "process":
            raise RuntimeError(
                f"work pool {name!r} does not exist; create it first, e.g. "
                f"`prefect work-pool create {name} --type kubernetes "
                "--base-job-template infra/work-pools/gpu-kubernetes.json`"
            ) from None
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deploy_all(
    work_pool: str = DEFAULT_CPU_POOL,
    *,
    gpu_work_pool: str | None = None,
    preset: str = "tiny",
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    storage: str | None = None,
    cron: str | None = None,
    api_url: str | None = None,
    image: str | None = None,
    gpu_image: str | None = None,
) -> list[UUID]:
    """Register all deployments with the API against work pools, without building images.

    Stages marked ``gpu`` go to ``gpu_work_pool`` when given (with ``gpu_image`` as their
    image), everything else to ``work_pool``. A missing process pool is created; a missing
    GPU pool is an error, since a Kubernetes pool needs its job template from infra/.
    Registering twice updates the deployments in place. Returns the deployment ids.
    """
    from prefect.client.orchestration import get_client

    deployments = build_deployments(
        preset,
        config_path=config_path,
        overrides=overrides,
        storage=storage,
        cron=cron,
        work_pool=work_pool,
        gpu_work_pool=gpu_work_pool,
        module_entrypoints=True,
    )
    with _api(api_url):
        with get_client(sync_client=True) as client:
            _ensure_pool(client, work_pool, "process")
            if gpu_work_pool:
                _ensure_pool(client, gpu_work_pool, "kubernetes")
        ids = []
        for deployment in deployments:
            on_gpu = gpu_work_pool is not None and deployment.work_pool_name == gpu_work_pool
            ids.append(deployment.apply(image=(gpu_image if on_gpu else image)))
    return ids
