"""Numbered checkpoints in a storage folder, with automatic fallback on corruption.

Used by every resumable stage (autoencoder training, OT solve, GAN fine-tuning).
A checkpoint is ``ckpt-{step:08d}.pt`` written atomically; loading walks from the
newest to the oldest and skips (with a warning) any file that does not load, so a
truncated upload or a disk hiccup costs one checkpoint interval, not the run.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from vegan.storage import Storage

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointDir:
    """Save / load / prune numbered checkpoints under one storage folder."""

    def __init__(self, storage: Storage, keep: int = 3):
        self.storage = storage
        self.keep = max(1, keep)

    def steps(self) -> list[int]:
        """Steps that have a checkpoint file, oldest first."""
        steps = []
        for name in self.storage.listdir():
            m = _NAME.match(name)
            if m:
                steps.append(int(m.group(1)))
        return sorted(steps)

    def save(self, step: int, state: dict[str, Any]) -> None:
        self.storage.save_torch(f"ckpt-{step:08d}.pt", {"step": step, **state})
        for old in self.steps()[: -self.keep]:
            self.storage.rm(f"ckpt-{old:08d}.pt")

    def load_latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads, or None when there is none."""
        for step in reversed(self.steps()):
            name = f"ckpt-{step:08d}.pt"
            try:
                state = self.storage.load_torch(name)
                if not isinstance(state, dict) or state.get("step") != step:
                    raise ValueError("unexpected content")
                return state
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped
                log.warning("skipping corrupt checkpoint %s: %s", self.storage.uri(name), exc)
        return None
