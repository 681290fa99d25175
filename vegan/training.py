"""One resumable training loop, shared by every cookbook model and by AE-OT-GAN fine-tuning.

A kind of training describes itself as a :class:`TrainJob`: a ``step(step, gen)``
function that does one training step (any number of optimizer updates) and
returns scalar losses by name, plus the modules and optimizers a checkpoint must
hold. :func:`run_loop` does everything else, and reads top to bottom: restore
the newest valid checkpoint (or return at once if training already finished),
then loop over steps, checking that every loss is finite, recording history,
and checkpointing every ``checkpoint_every`` steps, at the end and on SIGTERM
(a preempted worker loses nothing). A non-finite loss stops training without
overwriting the last good checkpoint.

Resume is exact because a step depends on nothing but ``step`` (batches come
from :func:`vegan.data.stream.batch_source`, or :class:`BatchIndices`, as pure
functions of ``(seed, step)``) and the generator ``gen``
the loop passes in and checkpoints: a run resumed from step k is identical to
an uninterrupted one (bitwise on CPU; on GPU up to cuDNN's nondeterminism).

:func:`train_model` is the job of a cookbook model (:mod:`vegan.models.base`);
:func:`vegan.gan.finetune_decoder` builds the AE-OT-GAN job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vegan.checkpoint import CheckpointDir
from vegan.config import AEConfig
from vegan.data.base import ChunkedRows, Dataset
from vegan.data.stream import batch_source
from vegan.device import resolve_device
from vegan.models.base import GenerativeModel
from vegan.progress import Progress

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad data, divergence, incompatible checkpoint)."""


class TrainingInterrupted(TrainingError):
    """SIGTERM arrived; a checkpoint at ``step`` was saved (when a CheckpointDir was given)."""

    def __init__(self, step: int):
        super().__init__(f"training interrupted by SIGTERM at step {step}; rerun to resume")
        self.step = step


def mix_seeds(*ints: int) -> int:
    """A stable 64-bit seed from integers (Python's hash is not meant for this)."""
    return int.from_bytes(hashlib.sha256(repr(ints).encode()).digest()[:8], "little")


class BatchIndices:
    """Example indices for step ``s``: slice ``[s*B, (s+1)*B)`` of an endless stream made of
    one permutation per epoch, each seeded by ``(seed, epoch)``. Depends on nothing else,
    so no sampler state needs checkpointing."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            gen = torch.Generator().manual_seed(mix_seeds(self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def __call__(self, step: int) -> torch.Tensor:
        pos, end = step * self.batch_size, (step + 1) * self.batch_size
        parts = []
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, end - pos)
            parts.append(self._perm(epoch)[offset : offset + take])
            pos += take
        return torch.cat(parts)


@contextlib.contextmanager
def sigterm_event():
    """An event set on SIGTERM. Signal handlers can only live in the main thread; elsewhere
    (a Prefect worker thread) the event is never set and the previous behaviour stays."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------ the contract
@dataclass
class TrainJob:
    """One kind of training, as the loop sees it."""

    name: str  # in messages and on the progress bar
    step: Callable[[int, torch.Generator], dict[str, torch.Tensor]]
    """Does training step ``step`` (0-based) with all its noise from ``gen``; returns scalar losses."""
    state: dict[str, Any]
    """Modules and optimizers (anything with ``state_dict``/``load_state_dict``) a checkpoint holds, by name."""
    meta: dict[str, Any]
    """What was trained (model, shapes, loss); a checkpoint made for other ``meta`` is refused."""
    steps: int
    seed: int
    device: torch.device
    checkpoint_every: int
    keep_checkpoints: int = 3
    main_loss: str = "loss"  # shown on the progress bar
    finish: Callable[[], None] | None = None  # run once after the last step, before the final checkpoint
    hint: str = "Lower the learning rate or check the data."  # appended to the non-finite-loss error


@dataclass
class LoopResult:
    history: list[dict] = field(default_factory=list)
    step: int = 0
    resumed_from: int | None = None


def _restore(saved: dict, job: TrainJob, gen: torch.Generator) -> None:
    if saved.get("meta") != job.meta:
        raise TrainingError(
            f"{job.name}: checkpoint at step {saved['step']} belongs to {saved.get('meta')}, not {job.meta}; "
            "use another checkpoint folder"
        )
    try:
        for name, obj in job.state.items():
            obj.load_state_dict(saved["state"][name])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise TrainingError(f"{job.name}: checkpoint at step {saved['step']} does not fit: {exc}") from exc
    if saved.get("rng_device") == gen.device.type:
        gen.set_state(saved["rng"])
    else:
        # CPU and CUDA generators have different states: continue deterministically, not identically.
        log.warning("checkpoint RNG is from %s, now on %s: reseeding", saved.get("rng_device"), gen.device.type)
        gen.manual_seed(mix_seeds(job.seed, saved["step"]))


def _save(ckpt: CheckpointDir | None, step: int, job: TrainJob, gen, history: list, seconds: float) -> None:
    if ckpt is not None:
        state = {name: obj.state_dict() for name, obj in job.state.items()}
        ckpt.save(step, {"meta": job.meta, "state": state, "rng": gen.get_state(), "rng_device": gen.device.type,
                         "history": history, "seconds": seconds})  # fmt: skip


def _scalars(out: dict[str, torch.Tensor]) -> dict[str, float]:
    """Losses as floats, with one device sync for all of them."""
    return dict(zip(out, torch.stack([v.detach().float() for v in out.values()]).tolist()))


# --------------------------------------------------------------------- the loop
def run_loop(
    job: TrainJob, checkpoints: CheckpointDir | None = None, progress: bool = True, log_every: int = 50
) -> LoopResult:
    """Run ``job`` to ``job.steps``, resuming from the newest loadable checkpoint in ``checkpoints``.

    History gets a row at step 1, every ``log_every`` steps and at the last step.
    Raises :class:`TrainingError` on a non-finite loss or an incompatible
    checkpoint, :class:`TrainingInterrupted` after checkpointing on SIGTERM.
    """
    gen = torch.Generator(device=job.device).manual_seed(mix_seeds(job.seed, -1))
    if checkpoints is not None:
        checkpoints = CheckpointDir(checkpoints.storage, keep=job.keep_checkpoints)
    saved = checkpoints.load_latest() if checkpoints is not None else None
    start, history, seconds, resumed_from = 0, [], 0.0, None
    if saved is not None:
        _restore(saved, job, gen)
        start = resumed_from = saved["step"]
        history, seconds = saved["history"], saved["seconds"]
        log.info("resuming %s from step %d", job.name, start)
    if start >= job.steps:
        return LoopResult(history, start, resumed_from)

    last_saved = start if saved is not None else None
    t0 = time.perf_counter() - seconds
    bar = Progress(job.steps, job.name, enabled=progress, initial=start, unit="step")
    with sigterm_event() as sigterm, bar:
        for step in range(start, job.steps):
            losses = _scalars(job.step(step, gen))
            done = step + 1

            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                where = f"step {last_saved}" if last_saved is not None else "none written"
                raise TrainingError(
                    f"{job.name}: non-finite loss {', '.join(f'{k}={losses[k]}' for k in bad)} at step {done}; "
                    f"last good checkpoint: {where}. {job.hint}"
                )
            if done == 1 or done % log_every == 0 or done == job.steps:
                history.append({"step": done, **losses, "seconds": time.perf_counter() - t0})
            bar.set_postfix({job.main_loss: f"{losses[job.main_loss]:.4g}"}, refresh=False)
            bar.update(1)

            if done == job.steps and job.finish is not None:
                job.finish()
            if done == job.steps or done % job.checkpoint_every == 0 or sigterm.is_set():
                _save(checkpoints, done, job, gen, history, time.perf_counter() - t0)
                last_saved = done
            if sigterm.is_set() and done < job.steps:
                raise TrainingInterrupted(done)

    log.info("trained %s for %d steps", job.name, job.steps)
    return LoopResult(history, job.steps, resumed_from)


# ------------------------------------------------------------ cookbook models
@dataclass
class TrainResult:
    model: GenerativeModel
    history: list[dict] = field(default_factory=list)
    step: int = 0
    resumed_from: int | None = None


AFTER_TRAINING_ROWS = 65_536
"""Most examples ``model.after_training`` sees (the plain AE fits its sampler to their codes): every named
dataset fits whole; a larger one gives a seeded sample of whole chunks, so memory stays bounded."""


def as_rows(data: torch.Tensor | ChunkedRows) -> ChunkedRows:
    """Training data as chunked rows: a float tensor is wrapped in memory, datasets pass through."""
    if isinstance(data, torch.Tensor):
        if not data.is_floating_point():
            raise TrainingError(f"data must be a float tensor, got {type(data).__name__} {data.dtype}")
        return Dataset("tensor", data.float(), None)
    if not isinstance(data, ChunkedRows):
        raise TrainingError(f"data must be a float tensor or a dataset, got {type(data).__name__}")
    return data


def _check_data(model: GenerativeModel, data: ChunkedRows) -> None:
    """Shape and size from metadata (a lazy dataset is not read); finiteness of in-memory data up front
    (lazy data is checked batch by batch, :func:`check_batch`)."""
    if tuple(data.shape) != model.shape:
        raise TrainingError(f"data examples have shape {tuple(data.shape)} but the model was built for {model.shape}")
    if len(data) < 2:
        raise TrainingError(f"need at least 2 training examples, got {len(data)}")
    if isinstance(data, Dataset) and not torch.isfinite(data.data).all():
        raise TrainingError("training data contains NaN or infinite values")


def check_batch(x: torch.Tensor, step: int, what: str = "training data") -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise TrainingError(f"{what} contains NaN or infinite values (batch of step {step + 1})")
    return x


def fit_sample(data: ChunkedRows, seed: int, max_rows: int = AFTER_TRAINING_ROWS) -> torch.Tensor:
    """All rows as float32 when there are at most ``max_rows``; else whole chunks in a ``seed``-shuffled
    order until ``max_rows`` rows (chunk reads, not scattered rows)."""
    if len(data) <= max_rows:
        return data.float_rows(0, len(data))
    order = torch.randperm(data.n_chunks, generator=torch.Generator().manual_seed(mix_seeds(seed, -2)))
    parts, total = [], 0
    for c in order.tolist():
        if total >= max_rows:
            break
        lo, hi = data.chunk_bounds(c)
        parts.append(data.float_rows(lo, min(hi, lo + max_rows - total)))
        total += len(parts[-1])
    return torch.cat(parts)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision="bf16"`` (convs and matmuls in bf16; torch keeps reductions, losses
    and optimizer state in float32), a no-op for float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def scheduled_lr(cfg: AEConfig, step: int) -> float:
    """The learning rate of step ``step``: a function of the step alone, so a resumed run follows the
    same schedule (cosine from ``lr`` down to ``lr / 100``)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    t = min(step / max(cfg.steps - 1, 1), 1.0)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(optimizer: torch.optim.Optimizer, cfg: AEConfig, step: int) -> None:
    """Scale every group's rate by the schedule, keeping the groups' ratios to ``cfg.lr``."""
    for group in optimizer.param_groups:
        base = group.setdefault("base_lr", group["lr"])
        group["lr"] = base * scheduled_lr(cfg, step) / cfg.lr


def train_model(
    model: GenerativeModel,
    data: torch.Tensor | ChunkedRows,
    cfg: AEConfig,
    checkpoints: CheckpointDir | None = None,
    progress: bool = True,
    log_every: int = 50,
) -> TrainResult:
    """Train ``model`` on ``data`` (N examples of ``model.shape``) for ``cfg.steps`` steps.

    ``data`` is a float tensor or a dataset (in memory, or a lazy ``ZarrDataset``
    far larger than memory). The model's ``train_step(x, optimizers, gen)`` is the
    step; the batch of step ``s`` is ``batch_source(data, B, seed).batch(s)``,
    streamed a few chunks at a time. Resumes from the newest valid checkpoint
    in ``checkpoints``; returns at once when that checkpoint is already at
    ``cfg.steps``. Returns the model on CPU in eval mode. Raises
    :class:`TrainingError` on bad data or a non-finite loss and
    :class:`TrainingInterrupted` after checkpointing on SIGTERM.
    """
    data = as_rows(data)
    _check_data(model, data)
    device = resolve_device(cfg.device)
    model.to(device).train()
    optimizers = model.make_optimizers(cfg)
    batches = batch_source(data, cfg.batch_size * model.batch_multiplier, cfg.seed, pin_memory=device.type == "cuda")

    def step(s: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        x = check_batch(batches.batch(s), s)
        for opt in optimizers.values():
            set_lr(opt, cfg, s)
        with autocast(device, cfg.precision):
            return model.train_step(x.to(device, non_blocking=True), optimizers, gen)

    def finish() -> None:
        model.eval()
        model.after_training(fit_sample(data, cfg.seed), cfg)

    job = TrainJob(
        name=f"train {model.name}", step=step,
        state={"model": model, **{f"optimizer.{k}": opt for k, opt in optimizers.items()}},
        meta={"model": model.name, "shape": list(model.shape)},
        steps=cfg.steps, seed=cfg.seed, device=device, checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints, main_loss=model.main_loss, finish=finish,
        hint="Lower cfg.lr or check the data.",
    )  # fmt: skip
    with batches:
        res = run_loop(job, checkpoints, progress, log_every)
    model.cpu().eval()
    return TrainResult(model, res.history, res.step, res.resumed_from)
