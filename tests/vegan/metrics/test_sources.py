"""Row sources and chunked gathers (vegan.metrics.sources) and the extractor's training rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vegan.data import Dataset, ZarrDataset, ingest
from vegan.metrics.classifiers import TrainingRows, train_domain_classifier
from vegan.metrics.sources import DatasetRows, gather_rows, head


@pytest.fixture()
def zarr_rows(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(50, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 3)
    ingest(str(tmp_path / "d.npz"), str(tmp_path / "d.zarr"), chunk_rows=8, progress=False)
    return x, ZarrDataset(str(tmp_path / "d.zarr"))


def test_gather_rows_any_order_with_repeats_reads_each_chunk_once(zarr_rows):
    x, ds = zarr_rows
    index = np.array([49, 3, 3, 17, 0, 40, 9])
    reads = ds.reads
    np.testing.assert_array_equal(gather_rows(ds, index), x[index])
    assert ds.reads - reads == 5  # chunks 6, 0, 2, 5, 1: one read each
    with pytest.raises(IndexError, match="out of range"):
        gather_rows(ds, np.array([50]))


def test_dataset_rows_key_follows_content_and_rows(zarr_rows):
    x, ds = zarr_rows
    a, b = DatasetRows(ds, np.arange(10, 20)), DatasetRows(ds, np.arange(10, 20))
    assert a.key == b.key != DatasetRows(ds, np.arange(11, 21)).key
    torch.testing.assert_close(a.rows(2, 5), torch.from_numpy(x[12:15]).float() / 255)
    cut = head(a, 4)
    assert len(cut) == 4 and cut.key != a.key and head(a, 4, keep_key=True).key == a.key and head(a, 99) is a


def test_training_rows_skip_the_excluded_rows():
    data = torch.arange(10.0)[:, None]
    rows = TrainingRows(Dataset("d", data, torch.arange(10)), torch.arange(10), exclude=[7, 1, 4])
    assert len(rows) == 7
    assert rows.dataset_rows(np.arange(7)).tolist() == [0, 2, 3, 5, 6, 8, 9]
    x, y = rows.take(np.array([6, 0, 3]))
    assert x[:, 0].tolist() == [9.0, 0.0, 5.0] and y.tolist() == [9, 0, 5]


def test_classifier_on_a_zarr_dataset_equals_the_one_on_its_tensor(zarr_rows):
    """Same subsample, same batches: a lazy dataset read by chunk trains the very same classifier."""
    x, ds = zarr_rows
    lazy, _ = train_domain_classifier(TrainingRows(ds, ds.labels), None, steps=5, max_examples=30)
    dense, _ = train_domain_classifier(torch.from_numpy(x).float() / 255, ds.labels, steps=5, max_examples=30)
    for p, q in zip(lazy.state_dict().values(), dense.state_dict().values()):
        torch.testing.assert_close(p, q)
