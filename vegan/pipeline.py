"""Running the stages of :mod:`vegan.stages.registry`, without any orchestrator.

:func:`run_stage` runs one stage unless its done marker exists and records its
status in the manifest; :func:`run_pipeline` checks the inputs (:func:`preflight`)
and runs a stage with everything upstream of it, in order, under the run lock,
with the run's one Dask client (:mod:`vegan.cluster`) when ``cluster.address`` names one.
The Prefect layer (``tasks/``, ``flows/``) wraps exactly these functions; a
notebook can call :func:`run_pipeline` directly.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from vegan.cluster import connect
from vegan.config import PipelineConfig
from vegan.digests import CorruptChunkError
from vegan.manifest import RunLock
from vegan.stages.base import StageError
from vegan.stages.context import Run
from vegan.stages.registry import STAGE_NAMES, get, plan
from vegan.storage import Storage
from vegan.training import TrainingInterrupted
from vegan.verify import dataset_damage, heal_chunk, owner_stage

MAX_HEALS = 16
"""Bad chunks a stage may have rewritten upstream in one run before the error stands."""

log = logging.getLogger(__name__)


def is_interruption(exc: BaseException) -> bool:
    """A shutdown request (SIGTERM, Ctrl-C), not a failure: the stage resumes on rerun and is not retried.

    ``BaseException``s that are not ``Exception``s (KeyboardInterrupt, SystemExit, an
    orchestrator's termination signal) arrive from outside; the trainers turn SIGTERM
    into :class:`~vegan.training.TrainingInterrupted` after checkpointing.
    """
    return isinstance(exc, TrainingInterrupted) or not isinstance(exc, Exception)


def run_stage(run: Run, stage: str) -> dict[str, Any]:
    """Run one stage unless its done marker exists; record its status in the manifest."""
    declared = get(stage)
    if run.manifest.is_done(stage):
        log.info("stage %s (%s) already done: skipped", stage, run.keys[stage])
        return {**run.manifest.done_info(stage), "reused": True}
    for up in declared.upstream:
        run.require(up)
    run.manifest.set_status(stage, "running")
    t0 = time.perf_counter()
    healed: set[tuple[str, int]] = set()
    while True:
        try:
            info = declared.run(run)
            break
        except CorruptChunkError as exc:
            owner = owner_stage(run.manifest, run.storage, exc)
            if owner is None or owner == stage or (owner, exc.chunk) in healed or len(healed) >= MAX_HEALS:
                run.manifest.set_status(stage, "failed", error=f"{type(exc).__name__}: {exc}")
                raise
            # A stage output's chunk is bad: its stage rewrites that chunk alone, then this stage starts again.
            log.warning("%s; rewriting it with stage %s, then running %s again", exc, owner, stage)
            healed.add((owner, exc.chunk))
            heal_chunk(run.manifest, run.storage, owner, exc.chunk)
            run_stage(run, owner)
            run.forget()
        except BaseException as exc:
            status = "interrupted" if is_interruption(exc) else "failed"
            run.manifest.set_status(
                stage, status, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            )
            raise
    info = {
        **info,
        "seconds": round(time.perf_counter() - t0, 2),
        "output": run.storage.uri(run.manifest.output(stage)),
        **({"cluster": run.client.scheduler.address} if run.client is not None else {}),
    }
    run.manifest.mark_done(stage, info)
    return {**info, "key": run.keys[stage], "reused": False}


def preflight(cfg: PipelineConfig, storage: Storage | str, until: str = "eval") -> Storage:
    """Fail in seconds, before any stage starts, on what would otherwise fail hours into a run.

    Checks that the run folder is writable (bucket, endpoint, credentials), that the
    dataset loads, and, when evaluation is planned, that the feature extractor can
    work on it (labels for ``domain``, a weights file for ``inception-tf``).
    Returns the opened storage.
    """
    from vegan.data import load_dataset

    stages = plan(until)
    unknown = sorted(set(cfg.cluster.gpu_stages) - set(STAGE_NAMES))
    if unknown:
        raise StageError(f"cluster.gpu_stages: unknown stage(s) {unknown}; stages are {', '.join(STAGE_NAMES)}")
    store = storage if isinstance(storage, Storage) else Storage(storage)
    store.check_writable()
    dataset = load_dataset(cfg.data)
    bad = dataset_damage(cfg)  # an input is never rewritten: a bad chunk stops the run here, named
    if bad:
        more = f" (and {len(bad) - 1} more bad chunk(s): `vegan verify` lists them)" if len(bad) > 1 else ""
        raise CorruptChunkError(cfg.data.name, bad[0].chunk, bad[0].lo, bad[0].hi, bad[0].why + more, dataset=True)
    if "eval" in stages:
        from vegan.evaluation import check_extractor

        try:
            check_extractor(cfg.data, cfg.eval, dataset.labels is not None, dataset.is_image)
        except ValueError as exc:
            raise StageError(str(exc)) from None
    return store


def run_pipeline(cfg: PipelineConfig, storage: Storage | str, until: str = "eval", progress: bool = True) -> dict:
    """Run ``until`` and every stage upstream of it, without Prefect (for notebooks and scripts).

    One Dask client (``cfg.cluster``) serves every stage of the run, opened after the lock is taken.
    """
    store = preflight(cfg, storage, until)
    with RunLock(store), connect(cfg.cluster) as client:
        run = Run(cfg, store, progress=progress, client=client)
        return {stage: run_stage(run, stage) for stage in plan(until)}
