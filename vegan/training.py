"""One resumable training loop for every cookbook model.

Read it top to bottom: resolve the device, restore the newest valid checkpoint
(or return at once if training already finished), then loop over steps. Each
step draws its batch from ``(seed, step)`` alone and all noise from a generator
saved in the checkpoint, so a run resumed from step k is identical to an
uninterrupted one (bitwise on CPU; on GPU up to cuDNN's nondeterminism). Checkpoints are written every ``cfg.checkpoint_every`` steps,
at the end, and on SIGTERM (a preempted worker loses nothing); a non-finite
loss stops training without overwriting the last good checkpoint.

The loop knows nothing about losses: each model's ``train_step`` does its own
updates (see :mod:`vegan.models.base`).
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

import torch
from tqdm.auto import tqdm

from vegan.checkpoint import CheckpointDir
from vegan.config import AEConfig
from vegan.device import resolve_device
from vegan.models.base import GenerativeModel

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad data, divergence, incompatible checkpoint)."""


class TrainingInterrupted(TrainingError):
    """SIGTERM arrived; a checkpoint at ``step`` was saved (when a CheckpointDir was given)."""

    def __init__(self, step: int):
        super().__init__(f"training interrupted by SIGTERM at step {step}; rerun to resume")
        self.step = step


@dataclass
class TrainResult:
    model: GenerativeModel
    history: list[dict] = field(default_factory=list)
    step: int = 0
    resumed_from: int | None = None



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


def _check_data(model: GenerativeModel, data: torch.Tensor) -> None:
    if not isinstance(data, torch.Tensor) or not data.is_floating_point():
        raise TrainingError(f"data must be a float tensor, got {type(data).__name__} {getattr(data, 'dtype', '')}")
    if tuple(data.shape[1:]) != model.shape:
        raise TrainingError(
            f"data examples have shape {tuple(data.shape[1:])} but the model was built for {model.shape}"
        )
    if len(data) < 2:
        raise TrainingError(f"need at least 2 training examples, got {len(data)}")
    if not torch.isfinite(data).all():
        raise TrainingError("training data contains NaN or infinite values")


def _restore(state: dict, model: GenerativeModel, optimizers: dict, gen: torch.Generator, seed: int) -> None:
    if state.get("model_name") != model.name or tuple(state.get("shape", ())) != model.shape:
        raise TrainingError(
            f"checkpoint at step {state['step']} belongs to model {state.get('model_name')!r} with shape "
            f"{state.get('shape')}, not {model.name!r} with shape {model.shape}; use another checkpoint folder"
        )
    try:
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise TrainingError(f"checkpoint at step {state['step']} does not fit this model: {exc}") from exc
    if state.get("rng_device") == gen.device.type:
        gen.set_state(state["rng"])
    else:
        # CPU and CUDA generators have different states: continue deterministically, not identically.
        log.warning("checkpoint RNG is from %s, now on %s: reseeding", state.get("rng_device"), gen.device.type)
        gen.manual_seed(mix_seeds(seed, state["step"]))


def _save(ckpt: CheckpointDir | None, step: int, model, optimizers, gen, history, seconds) -> None:
    if ckpt is None:
        return
    ckpt.save(
        step,
        {
            "model_name": model.name,
            "shape": list(model.shape),
            "model": model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "rng": gen.get_state(),
            "rng_device": gen.device.type,
            "history": history,
            "seconds": seconds,
        },
    )


def train_model(
    model: GenerativeModel,
    data: torch.Tensor,
    cfg: AEConfig,
    checkpoints: CheckpointDir | None = None,
    progress: bool = True,
    log_every: int = 50,
) -> TrainResult:
    """Train ``model`` on ``data`` (N examples of ``model.shape``) for ``cfg.steps`` steps.

    Resumes from the newest valid checkpoint in ``checkpoints``; returns at once
    when that checkpoint is already at ``cfg.steps``. Returns the model on CPU in
    eval mode. Raises :class:`TrainingError` on bad data or a non-finite loss and
    :class:`TrainingInterrupted` after checkpointing on SIGTERM.
    """
    _check_data(model, data)
    data = data.float()
    device = resolve_device(cfg.device)
    model.to(device)
    optimizers = model.make_optimizers(cfg)
    gen = torch.Generator(device=device)
    gen.manual_seed(mix_seeds(cfg.seed, -1))

    start, history, seconds, resumed_from = 0, [], 0.0, None
    if checkpoints is not None:
        checkpoints = CheckpointDir(checkpoints.storage, keep=cfg.keep_checkpoints)
    state = checkpoints.load_latest() if checkpoints is not None else None
    if state is not None:
        _restore(state, model, optimizers, gen, cfg.seed)
        start = resumed_from = state["step"]
        history, seconds = state["history"], state["seconds"]
        log.info("resuming %s from step %d", model.name, start)
    if start >= cfg.steps:
        model.cpu().eval()
        return TrainResult(model, history, start, resumed_from)

    batches = BatchIndices(len(data), cfg.batch_size * model.batch_multiplier, cfg.seed)
    last_saved = start if state is not None else None
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=f"train {model.name}", dynamic_ncols=True)
    t0 = time.perf_counter() - seconds
    model.train()
    with sigterm_event() as sigterm, bar:
        for step in range(start, cfg.steps):
            x = data[batches(step)].to(device, non_blocking=True)
            out = model.train_step(x, optimizers, gen)
            losses = dict(zip(out, torch.stack([v.float() for v in out.values()]).tolist()))
            done = step + 1

            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                where = f"step {last_saved}" if last_saved is not None else "none written"
                raise TrainingError(
                    f"{model.name}: non-finite loss {', '.join(f'{k}={losses[k]}' for k in bad)} at step {done}; "
                    f"last good checkpoint: {where}. Lower cfg.lr or check the data."
                )
            if done % log_every == 0 or done == cfg.steps:
                history.append({"step": done, **losses, "seconds": time.perf_counter() - t0})
            bar.update(1)
            bar.set_postfix({model.main_loss: f"{losses[model.main_loss]:.4g}"}, refresh=False)

            if done == cfg.steps:
                model.eval()
                model.after_training(data, cfg)
            if done == cfg.steps or done % cfg.checkpoint_every == 0 or sigterm.is_set():
                _save(checkpoints, done, model, optimizers, gen, history, time.perf_counter() - t0)
                last_saved = done
            if sigterm.is_set() and done < cfg.steps:
                raise TrainingInterrupted(done)

    log.info("trained %s for %d steps", model.name, cfg.steps)
    model.cpu().eval()
    return TrainResult(model, history, cfg.steps, resumed_from)
