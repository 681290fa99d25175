"""What a pipeline stage is: one :class:`Stage` declaration, and the context its function gets.

A stage module (``vegan/stages/ae.py`` ...) holds the stage's function and its
``STAGE = Stage(...)`` declaration; :mod:`vegan.stages.registry` lists the
declarations once. Everything else (config keys, manifest outputs, Prefect
tasks, stage flows, deployments, CLI choices, the execution order) is derived
from that list.

Stage functions are typed against :class:`StageContext`, the part of
:class:`vegan.stages.context.Run` they may use. The protocol (not ``Run`` itself)
keeps the import graph acyclic: ``Run`` needs the manifest, the manifest needs
the registry, and the registry needs the stage functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from vegan.config import PipelineConfig
    from vegan.data import Dataset
    from vegan.storage import Storage


class StageError(RuntimeError):
    """A stage cannot run (missing upstream output, unusable input)."""


class DoneMarkers(Protocol):
    """Read access to the done markers of a run (:class:`vegan.manifest.Manifest`)."""

    def is_done(self, stage: str) -> bool: ...

    def done_info(self, stage: str) -> dict[str, Any]: ...


class StageContext(Protocol):
    """What a stage function may use: the run's config, storage and the outputs of finished stages."""

    cfg: PipelineConfig
    storage: Storage
    keys: dict[str, str]
    manifest: DoneMarkers
    progress: bool
    client: Any
    """The run's Dask client (one for every stage, :mod:`vegan.cluster`), or None: run in this process."""

    def dir(self, stage: str) -> Storage:
        """The output folder of ``stage`` (for this config's key)."""
        ...

    def zarr_store(self, stage: str, read_only: bool = False) -> Any:
        """A Zarr store at the output location of ``stage``."""
        ...

    def require(self, stage: str) -> None:
        """Raise :class:`StageError` unless ``stage`` has finished."""
        ...

    def has_encoder(self) -> bool: ...

    def resources(self, stage: str) -> dict[str, int] | None:
        """Dask resources the tasks of ``stage`` request (``cluster.gpu_stages``)."""
        ...

    @property
    def dataset(self) -> Dataset: ...

    @property
    def model(self) -> Any:
        """The trained autoencoder (or cookbook model), on CPU, in eval mode."""
        ...

    @property
    def codes(self) -> np.ndarray: ...

    @property
    def codes_store(self) -> Any:
        """The codes' Zarr location (:class:`vegan.ot.targets.ZarrTargets`), for workers that read them."""
        ...

    @property
    def generator(self) -> torch.nn.Module: ...


StageFn = Callable[[StageContext], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, declared once.

    ``name`` is also the :class:`~vegan.config.PipelineConfig` section that
    configures the stage. The stage's key hashes that section, the sections in
    ``reads``, the code version (package version + ``version``) and the keys of
    ``upstream``: change any of them and this stage and everything downstream
    get new keys, so they rerun.
    """

    name: str
    run: StageFn
    """``run(ctx) -> info``: writes the stage's outputs under ``ctx.dir(name)``; ``info`` goes in the done marker."""
    output: str
    """Output location relative to the run folder, with ``{key}`` for the stage key (``ae/{key}``)."""
    title: str
    upstream: tuple[str, ...] = ()
    """Stages whose outputs ``run`` reads; they run first and their keys are part of this stage's key."""
    gpu: bool = False
    """Training that a GPU speeds up: deployed to the GPU work pool when there is one."""
    reads: tuple[str, ...] = ()
    """Other config sections the outputs depend on, beyond what the upstream keys cover (ae: ``data``)."""
    version: int = 1
    """Bump when this stage's outputs change for the same config (the package version covers releases)."""

    def location(self, key: str) -> str:
        return self.output.format(key=key)
