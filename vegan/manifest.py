"""The run manifest (``{run}/manifest.json``) and the run lock.

The manifest records the config, each stage's key, status and output location,
and library versions, so ``vegan status`` can answer from storage alone. A stage
is *done* only when its marker ``done/{key}.json`` exists: the marker is written
last, after every output of the stage, so its presence proves the outputs are
complete. The lock stops two runs from writing to one folder at once.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import threading
import time
import uuid
from typing import Any

from vegan.config import PipelineConfig
from vegan.stages.registry import STAGE_NAMES, STAGES, stage_keys
from vegan.storage import Storage

STATUSES = ("pending", "running", "done", "failed", "interrupted")
"""``interrupted``: stopped by SIGTERM/Ctrl-C, resumable; ``failed``: stopped by an error."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import numpy
    import torch
    import zarr

    import vegan

    return {
        "vegan": vegan.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "zarr": zarr.__version__,
    }


class Manifest:
    """Read/update ``manifest.json``; stage status is derived from done markers."""

    def __init__(self, storage: Storage, cfg: PipelineConfig):
        self.storage = storage
        self.cfg = cfg
        self.keys = stage_keys(cfg)

    def output(self, stage: str) -> str:
        return STAGES[stage].location(self.keys[stage])

    def done_marker(self, stage: str) -> str:
        return f"done/{self.keys[stage]}.json"

    def is_done(self, stage: str) -> bool:
        return self.storage.exists(self.done_marker(stage))

    def mark_done(self, stage: str, info: dict[str, Any]) -> None:
        self.storage.write_json(self.done_marker(stage), {"key": self.keys[stage], "finished": _now(), **info})
        self.set_status(stage, "done")

    def done_info(self, stage: str) -> dict[str, Any]:
        return self.storage.read_json(self.done_marker(stage))

    def read(self) -> dict[str, Any]:
        if self.storage.exists("manifest.json"):
            return self.storage.read_json("manifest.json")
        return {}

    def set_status(self, stage: str, status: str, error: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown stage status {status!r}; statuses are {', '.join(STATUSES)}")
        data = self.read()
        data.update(
            {
                "name": self.cfg.name,
                "config": self.cfg.model_dump(mode="json"),
                "versions": versions(),
                "updated": _now(),
            }
        )
        stages = data.setdefault("stages", {})
        for s in STAGE_NAMES:  # keys may have changed since the last run: refresh them all
            entry = stages.setdefault(s, {})
            if entry.get("key") != self.keys[s]:
                entry.clear()
            entry.update({"key": self.keys[s], "output": self.storage.uri(self.output(s))})
            entry.setdefault("status", "pending")
        stages[stage].update({"status": status, "updated": _now()})
        if error:
            stages[stage]["error"] = error[:2000]
        else:
            stages[stage].pop("error", None)
        self.storage.write_json("manifest.json", data)

    def status(self) -> dict[str, dict[str, Any]]:
        """Stage -> {status, key, output}: done markers win over what the manifest says."""
        recorded = self.read().get("stages", {})
        out = {}
        for s in STAGE_NAMES:
            entry = recorded.get(s, {})
            status = entry.get("status", "pending") if entry.get("key") == self.keys[s] else "pending"
            if self.is_done(s):
                status = "done"
            elif status == "done":  # marker gone (deleted outputs): it must rerun
                status = "pending"
            out[s] = {"status": status, "key": self.keys[s], "output": self.storage.uri(self.output(s))}
            if "error" in entry and status in ("failed", "interrupted"):
                out[s]["error"] = entry["error"]
        return out


class RunLockedError(RuntimeError):
    """Another live run holds the lock on this storage folder."""


class RunLock:
    """A lease on ``{run}/lock.json`` renewed by a heartbeat thread.

    A lock is taken over when its holder is dead: a process on this host that no
    longer exists (a killed run), or any holder whose heartbeat is older than
    ``stale_after`` seconds (a crashed machine), so resuming after a crash needs
    no manual clean-up. Object stores have no atomic create-if-absent,
    so acquisition writes, waits briefly and re-reads to detect a racing writer.
    """

    def __init__(self, storage: Storage, stale_after: float = 120.0, heartbeat: float = 20.0):
        self.storage = storage
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _holder(self) -> dict | None:
        try:
            return self.storage.read_json("lock.json")
        except (FileNotFoundError, ValueError):
            return None

    def _write(self) -> None:
        self.storage.write_json(
            "lock.json",
            {"owner": self.owner, "host": self.host, "pid": self.pid, "heartbeat": time.time(), "since": _now()},
        )

    def _alive(self, holder: dict) -> bool:
        if time.time() - holder.get("heartbeat", 0) >= self.stale_after:
            return False
        if holder.get("host") == self.host and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return True

    def acquire(self) -> None:
        holder = self._holder()
        if holder and holder.get("owner") != self.owner and self._alive(holder):
            raise RunLockedError(
                f"another run ({holder.get('owner')}, since {holder.get('since')}) is writing to "
                f"{self.storage.url}; wait for it to finish, or remove {self.storage.uri('lock.json')} "
                "if you are sure it is dead"
            )
        self._write()
        time.sleep(0.2)
        holder = self._holder()
        if not holder or holder.get("owner") != self.owner:
            raise RunLockedError(f"another run took the lock on {self.storage.url} at the same moment")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="vegan-run-lock")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried next time
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        holder = self._holder()
        if holder and holder.get("owner") == self.owner:
            self.storage.rm("lock.json")

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
