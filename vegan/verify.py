"""Check everything a run folder holds, and mark what is damaged so a rerun recomputes only that.

:func:`check_run` looks at the dataset (when it is a Zarr store), each stage's Zarr store
(every sealed chunk against its digest, :mod:`vegan.digests`), checkpoints, final files and
the eval cache (each must load), and returns one :class:`Finding` per item.
:func:`mark_damaged` turns the damage into work for the next ``vegan run``: a bad chunk of a
stage's store is marked missing (that stage then rewrites it alone), a bad final file is
removed with its stage's done marker (the stage reruns, resuming from its checkpoints), a bad
checkpoint is removed (resume would skip it anyway), a bad cached file is removed (it is
computed again). A dataset is an input: it is never touched, only named.
``vegan verify --storage RUN`` is these two functions and a table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vegan.config import PipelineConfig
from vegan.digests import CorruptChunkError, Damage, mark_missing, scan
from vegan.manifest import Manifest
from vegan.stages.registry import STAGE_NAMES
from vegan.storage import Storage

# Files each stage writes last, besides checkpoints (a stage may skip itself and write none).
FINAL_FILES = {
    "ae": ("model.pt",),
    "ot": ("result.npz", "result.json"),
    "gan": ("generator.pt", "history.json"),
    "eval": ("metrics.json",),
}
ZARR_STAGES = ("latents", "generate")


@dataclass
class Finding:
    """One checked item: ``status`` is ``ok`` or ``damaged``; ``chunks`` lists bad chunks of a store."""

    what: str
    location: str
    status: str
    detail: str = ""
    stage: str | None = None
    kind: str = "file"  # dataset | store | checkpoint | file | cache
    chunks: list[int] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return self.status != "ok"


def _zarr_group(storage: Storage, rel: str):
    import zarr

    return zarr.open_group(storage.zarr_store(rel, read_only=True), mode="r")


def _check_store(what: str, url: str, group, stage: str | None, kind: str) -> Finding:
    bad = scan(group, url)
    if not bad:
        return Finding(what, url, "ok", "every sealed chunk matches its digest", stage, kind)
    detail = "; ".join(f"chunk {d.chunk} (rows {d.lo}..{d.hi - 1}): {d.why}" for d in bad)
    return Finding(what, url, "damaged", detail, stage, kind, [d.chunk for d in bad])


def _loads(storage: Storage, name: str) -> str | None:
    """None when the file loads, else why not."""
    try:
        if name.endswith(".pt"):
            storage.load_torch(name)
        elif name.endswith(".json"):
            json.loads(storage.read_bytes(name))
        elif name.endswith(".npz"):
            import io

            import numpy as np

            with np.load(io.BytesIO(storage.read_bytes(name))) as z:
                for k in z.files:
                    z[k]
        else:
            storage.read_bytes(name)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is damage
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def _dataset_group(cfg: PipelineConfig):
    import zarr

    from vegan.data.zarrset import zarr_store

    name = cfg.data.name
    if not name.rstrip("/").endswith(".zarr"):
        return None
    return zarr.open_group(zarr_store(name, read_only=True), mode="r")


def dataset_damage(cfg: PipelineConfig) -> list[Damage]:
    """Bad chunks of the dataset, when it is a Zarr store (one read of it; [] for other datasets)."""
    group = _dataset_group(cfg)
    return [] if group is None else scan(group, cfg.data.name)


def check_dataset(cfg: PipelineConfig) -> Finding | None:
    """The dataset's chunks against their digests, when it is a Zarr store (None otherwise)."""
    group = _dataset_group(cfg)
    return None if group is None else _check_store("dataset", cfg.data.name, group, None, "dataset")


def check_run(storage: Storage, cfg: PipelineConfig) -> list[Finding]:
    """One finding per dataset, stage store, checkpoint and final file present in the run folder."""
    m = Manifest(storage, cfg)
    out = [f for f in [check_dataset(cfg)] if f is not None]
    for stage in STAGE_NAMES:
        rel = m.output(stage)
        if not storage.exists(rel):
            continue
        if stage in ZARR_STAGES:
            out.append(_check_store(stage, storage.uri(rel), _zarr_group(storage, rel), stage, "store"))
            continue
        folder = storage.sub(rel)
        for name in folder.listdir():
            kind = "checkpoint" if name.startswith("ckpt-") and name.endswith(".pt") else None
            if kind is None and name not in FINAL_FILES.get(stage, ()):
                continue
            why = _loads(folder, name)
            what = f"{stage} {kind or 'output'}"
            out.append(Finding(what, folder.uri(name), "damaged" if why else "ok", why or "", stage, kind or "file"))
    cache = storage.sub("cache")  # features and classifiers of the eval stage, recomputed when missing
    if cache.exists():
        root = cache.path().rstrip("/") + "/"
        for full in sorted(cache.fs.find(cache.path())):
            rel = full[len(root) :] if full.startswith(root) else full
            if rel.endswith(".pt"):
                why = _loads(cache, rel)
                out.append(Finding("eval cache", cache.uri(rel), "damaged" if why else "ok", why or "", None, "cache"))
    return out


def mark_damaged(storage: Storage, cfg: PipelineConfig, findings: list[Finding]) -> list[str]:
    """Turn damage into work for the next run (see the module docstring); returns what was done."""
    import zarr

    m = Manifest(storage, cfg)
    done: list[str] = []
    for f in findings:
        if not f.damaged or f.kind == "dataset":
            continue
        if f.kind == "cache":  # a cached file that does not load is computed again
            storage.rm(f.location.removeprefix(storage.uri()).lstrip("/"))
            done.append(f"removed {f.location} (recomputed when needed)")
            continue
        rel = m.output(f.stage)
        if f.kind == "store":
            mark_missing(zarr.open_group(storage.zarr_store(rel), mode="r+"), f.chunks)
            storage.rm(m.done_marker(f.stage))
            done.append(f"{f.stage}: chunk(s) {f.chunks} marked missing")
        elif f.kind == "checkpoint":
            storage.rm(f"{rel}/{f.location.rsplit('/', 1)[1]}")
            done.append(f"{f.stage}: removed {f.location}")
        else:
            storage.rm(f"{rel}/{f.location.rsplit('/', 1)[1]}")
            storage.rm(m.done_marker(f.stage))
            done.append(f"{f.stage}: removed {f.location}; the stage reruns")
    return done


def owner_stage(manifest: Manifest, storage: Storage, exc: CorruptChunkError) -> str | None:
    """The stage whose output store raised ``exc`` (None: the dataset or a store of no stage)."""
    url = exc.url.removeprefix("file://").rstrip("/")
    for stage in ZARR_STAGES:
        if storage.uri(manifest.output(stage)).removeprefix("file://").rstrip("/") == url:
            return stage
    return None


def heal_chunk(manifest: Manifest, storage: Storage, stage: str, chunk: int) -> None:
    """Mark ``chunk`` of ``stage``'s store missing and drop its done marker: the stage rewrites that chunk."""
    import zarr

    mark_missing(zarr.open_group(storage.zarr_store(manifest.output(stage)), mode="r+"), [chunk])
    storage.rm(manifest.done_marker(stage))


def table(findings: list[Finding]) -> str:
    """The findings as aligned text: status, what, location, detail."""
    rows = [("status", "what", "location", "detail")] + [(f.status, f.what, f.location, f.detail) for f in findings]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + (f"  {r[3]}" if r[3] else "") for r in rows)


def summary(findings: list[Finding]) -> dict[str, Any]:
    return {"checked": len(findings), "damaged": sum(f.damaged for f in findings)}
