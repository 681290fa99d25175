"""Feature extraction resumes per chunk: a process SIGKILLed mid-set leaves its finished chunks, and the
next run computes only the others, never rewriting a finished one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from vegan.config import DataConfig, EvalConfig
from vegan.data import DatasetError, load_dataset
from vegan.metrics import InceptionWeightsError, default_inception_path, extract_features, feature_space
from vegan.metrics.fidelity import reference_features
from vegan.storage import Storage

N, CHUNK = 48, 8  # six chunks of eight real MNIST images
KEY = "mnist-test-head-n48"
CFG = dict(extractor="inception-tf", precision="float32")

EXTRACT = textwrap.dedent(f"""
    import sys
    from vegan.config import DataConfig, EvalConfig
    from vegan.data import load_dataset
    from vegan.metrics import feature_space
    from vegan.metrics.fidelity import reference_features
    from vegan.storage import Storage

    x = load_dataset(DataConfig(name="mnist", split="test", limit={N})).data
    space = feature_space(EvalConfig(**{CFG!r}))
    print(space.fingerprint, flush=True)
    reference_features(x, space, {KEY!r}, Storage(sys.argv[1]), batch_size={CHUNK}, chunk_rows={CHUNK})
""")


class RecordingStorage(Storage):
    """A real local Storage that also records what it writes, and the files of each folder it removes."""

    def __init__(self, url: str):
        super().__init__(url)
        self.saved: list[str] = []
        self.removed: dict[str, os.stat_result] = {}

    def save_torch(self, rel, obj):
        self.saved.append(rel)
        super().save_torch(rel, obj)

    def rm(self, rel, recursive=True):
        for f in Path(self.path(rel)).glob("*.pt"):
            self.removed[f.name] = f.stat()
        super().rm(rel, recursive)


def _chunk_files(folder: Path) -> dict[str, os.stat_result]:
    return {f.name: f.stat() for f in folder.glob("*.pt")} if folder.is_dir() else {}


def test_sigkilled_extraction_resumes_at_the_next_unfinished_chunk(tmp_path):
    try:
        default_inception_path()
        x = load_dataset(DataConfig(name="mnist", split="test", limit=N)).data
    except (InceptionWeightsError, DatasetError) as exc:
        pytest.skip(str(exc))
    root = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", EXTRACT, str(root)], env=env, stdout=subprocess.PIPE, text=True)
    fingerprint = proc.stdout.readline().strip()
    assert fingerprint.startswith("inception-tf-offline-"), fingerprint
    base = root / "reference-features" / KEY / fingerprint
    chunks = base / f"chunks-{CHUNK}"
    deadline = time.monotonic() + 45
    while not _chunk_files(chunks) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    before = _chunk_files(chunks)
    assert 1 <= len(before) < N // CHUNK, f"the kill was meant to land mid-set: {sorted(before)}"
    assert not (base / "2048.pt").exists()

    cache = RecordingStorage(str(root))
    space = feature_space(EvalConfig(**CFG))
    assert space.fingerprint == fingerprint
    resumed, hit = reference_features(x, space, KEY, cache, batch_size=CHUNK, chunk_rows=CHUNK)
    assert not hit
    written = {Path(r).name for r in cache.saved if "/chunks-" in r}
    assert written.isdisjoint(before) and len(written) == N // CHUNK - len(before)  # only the missing chunks
    for name, st in before.items():  # the finished chunks were still the files the killed process wrote
        assert (cache.removed[name].st_ino, cache.removed[name].st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert not chunks.exists() and (base / "2048.pt").exists()

    # Tolerance: the same backend and arithmetic in two processes; only float rounding may differ.
    whole = extract_features(x, space, batch_size=CHUNK)["2048"]
    err = float((resumed["2048"] - whole).norm() / whole.norm())
    assert resumed["2048"].shape == (N, 2048) and err < 1e-5, err
    again, hit = reference_features(x, space, KEY, cache, batch_size=CHUNK, chunk_rows=CHUNK)
    assert hit and torch.equal(again["2048"], resumed["2048"])
