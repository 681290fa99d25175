"""Corrupt and missing chunks: named (store, chunk, rows, fix), and healed by rewriting that chunk alone.

One finished tiny run is made once; each test garbles a copy of it the way a disk or an
object store does (a flipped byte, a lost object) and checks what ``vegan run`` and
``vegan verify`` do with it.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from vegan.config import load_config
from vegan.digests import CheckedRows, CorruptChunkError, add_digests, scan, write_chunk
from vegan.manifest import Manifest
from vegan.pipeline import run_pipeline
from vegan.storage import Storage

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SETS = ["ae.steps=20", "ot.max_iter=10", "generate.centroid_samples=8192", "gan.steps=4", "gan.checkpoint_every=2"]


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)


def garble(path: Path) -> None:
    """Flip bytes in the middle of a chunk object, as a bad disk block would."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 8)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny run finished until generate (made once for the module; tests work on copies)."""
    run_dir = tmp_path_factory.mktemp("heal") / "run"
    run_pipeline(load_config("tiny", overrides=SETS), str(run_dir), until="generate", progress=False)
    return run_dir


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, Manifest]:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    return run_dir, Manifest(Storage(str(run_dir)), load_config("tiny", overrides=SETS))


# ------------------------------------------------------------------ the helper
def test_checked_rows_name_the_chunk_and_pass_old_stores(tmp_path):
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    g.create_array("codes", shape=(10, 2), chunks=(4, 2), dtype="float32", fill_value=np.nan)
    g.create_array("complete", shape=(3,), chunks=(1,), dtype="bool", fill_value=False)
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    old = CheckedRows(g, "codes", "S")  # no digests yet: read as it is
    for c in range(3):
        write_chunk(g, c, 4 * c, {"codes": rows[4 * c : 4 * c + 4]})
    assert (old.rows(0, 10) == rows).all()
    add_digests(g, 3, ["codes"])
    write_chunk(g, 1, 4, {"codes": rows[4:8]})  # sealed; chunks 0 and 2 stay unchecked
    reader = CheckedRows(g, "codes", "S")
    assert (reader.rows(3, 9) == rows[3:9]).all() and (reader.take(np.array([9, 5, 5, 0])) == rows[[9, 5, 5, 0]]).all()
    g["codes"][5] = [7, 7]
    with pytest.raises(CorruptChunkError, match=r"corrupt chunk 1 \(rows 4\.\.7\) of S: its bytes differ") as err:
        reader.rows(0, 2 + 4)
    again = pickle.loads(pickle.dumps(err.value))  # crosses from a Dask worker intact
    assert (again.url, again.chunk, again.lo, again.hi, str(again)) == ("S", 1, 4, 8, str(err.value))
    assert "rerun the same `vegan run` command" in str(again)
    assert [d.chunk for d in scan(g, "S")] == [1]


# ------------------------------------------------------------------ healing on read
def test_garbled_latent_chunk_is_named_and_a_plain_rerun_rewrites_it_alone(finished, tmp_path):
    """The issue's case: a byte-garbled latents chunk, then a rerun of OT with another tolerance."""
    run_dir, m = _copy(finished, tmp_path)
    codes = run_dir / m.output("latents") / "codes" / "c"
    before = np.asarray(zarr.open_group(str(run_dir / m.output("latents")), mode="r")["codes"][:])
    garble(codes / "2" / "0")
    stamps = mtimes(run_dir / m.output("latents"))
    proc = cli("run", "--no-prefect", "--quiet", "--preset", "tiny", "--storage", str(run_dir), "--until", "ot",
               *[a for s in [*SETS, "ot.tol=0.45"] for a in ("--set", s)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    url = str(run_dir / m.output("latents"))
    why = "(it cannot be decoded|its bytes differ)"  # where the flipped bytes land decides which
    named = re.search(rf"corrupt chunk 2 \(rows 256\.\.383\) of {re.escape(url)}: {why}", proc.stderr)
    assert named, proc.stderr
    changed = {
        p.relative_to(run_dir / m.output("latents")).as_posix() for p, t in stamps.items() if p.stat().st_mtime_ns != t
    }
    assert changed == {"codes/c/2/0", "labels/c/2", "digest/c/2/0", "complete/c/2"}, changed
    assert m.done_info("latents")["chunks_written"] == 1
    after = np.asarray(zarr.open_group(url, mode="r")["codes"][:])
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    assert m.is_done("ot")


def test_missing_generated_chunk_is_rewritten_when_the_gan_stage_reads_it(finished, tmp_path):
    run_dir, m = _copy(finished, tmp_path)
    store = run_dir / m.output("generate")
    before = np.asarray(zarr.open_group(str(store), mode="r")["codes"][:])
    (store / "codes" / "c" / "0" / "0").unlink()  # a lost object: Zarr alone would read NaN
    cfg = load_config("tiny", overrides=SETS)
    info = run_pipeline(cfg, str(run_dir), until="gan", progress=False)
    assert info["gan"]["steps"] == 4 and m.done_info("generate")["chunks"] == 1
    after = np.asarray(zarr.open_group(str(store), mode="r")["codes"][:])
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ vegan verify
def test_vegan_verify_names_damage_marks_it_and_a_rerun_rewrites_only_that(finished, tmp_path):
    run_dir, m = _copy(finished, tmp_path)
    latents = run_dir / m.output("latents")
    garble(latents / "codes" / "c" / "1" / "0")
    ckpt = sorted((run_dir / m.output("ae")).glob("ckpt-*.pt"))[0]
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # a truncated upload
    cached = run_dir / "cache" / "features" / "pool.pt"  # the eval stage's cache of features
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x80\x02 not what torch.save wrote")
    proc = cli("verify", "--storage", str(run_dir))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["status", "what", "location", "detail"]
    bad = [line for line in lines if line.startswith("damaged")]
    assert len(bad) == 3, proc.stdout
    assert any(str(latents) in line and "chunk 1 (rows 128..255)" in line for line in bad)
    assert any(str(ckpt) in line and "ae checkpoint" in line for line in bad)
    assert any(str(cached) in line and "eval cache" in line for line in bad)
    assert "3 damaged" in proc.stdout and "marked: latents: chunk(s) [1] marked missing" in proc.stdout
    assert not m.is_done("latents") and not ckpt.exists() and not cached.exists()
    stamps = mtimes(latents / "codes")
    info = run_pipeline(load_config("tiny", overrides=SETS), str(run_dir), until="generate", progress=False)
    assert info["latents"]["chunks_written"] == 1 and info["ot"]["reused"] and info["generate"]["reused"]
    assert [p.relative_to(latents).as_posix() for p, t in stamps.items() if p.stat().st_mtime_ns != t] == [
        "codes/c/1/0"
    ]
    clean = cli("verify", "--storage", str(run_dir))
    assert clean.returncode == 0 and " 0 damaged" in clean.stdout, clean.stdout


# ------------------------------------------------------------------ a dataset is never rewritten
def test_a_corrupt_dataset_chunk_stops_the_run_before_any_stage(tmp_path):
    data = tmp_path / "digits.zarr"
    ing = cli("ingest", "digits", str(data), "--limit", "300", "--chunk-rows", "100", "--quiet")
    assert ing.returncode == 0, ing.stderr
    garble(data / "x" / "c" / "1" / "0" / "0" / "0")
    stamps = mtimes(data)
    run_dir = tmp_path / "run"
    proc = cli("run", "--no-prefect", "--quiet", "--preset", "tiny", "--storage", str(run_dir),
               "--set", f"data.name={data}", "--set", "data.limit=null")  # fmt: skip
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"vegan: error: CorruptChunkError: corrupt chunk 1 (rows 100..199) of {data}: "), line
    assert "the dataset is an input and is never rewritten" in line
    assert not (run_dir / "manifest.json").exists()  # no stage started
    assert mtimes(data) == stamps
    with pytest.raises(CorruptChunkError, match="corrupt chunk 1"):
        from vegan.data import ZarrDataset

        ZarrDataset(str(data)).rows(150, 160)
    assert torch.is_tensor(ZarrDataset(str(data)).float_rows(0, 100))  # the other chunks still read
