"""Streamed batches: pure in (seed, step), cover each epoch once, read each chunk once per epoch."""

import numpy as np
import pytest
import torch

from vegan.data import Dataset, StreamBatches, ZarrDataset, ingest


@pytest.fixture(scope="module")
def zds(tmp_path_factory):
    """1,000 uint8 images in chunks of 64 (the last chunk is partial)."""
    root = tmp_path_factory.mktemp("stream")
    x = np.random.default_rng(0).integers(0, 256, size=(1000, 1, 3, 3), dtype=np.uint8)
    np.savez(root / "x.npz", x=x, y=np.arange(1000) % 7)
    ingest(str(root / "x.npz"), str(root / "x.zarr"), chunk_rows=64, progress=False)
    return ZarrDataset(str(root / "x.zarr")), x


def test_batch_is_a_pure_function_of_seed_and_step(zds):
    ds, x = zds
    B, steps = 48, 60  # 2.9 epochs: batches straddle windows and epochs
    with StreamBatches(ds, B, seed=5, prefetch=3) as run:
        full = [run.batch(s) for s in range(steps)]
    # Same values without prefetch, and from a fresh object restarted mid-epoch (resume).
    plain = StreamBatches(ds, B, seed=5, prefetch=0)
    with StreamBatches(ds, B, seed=5, prefetch=2) as resumed:
        for s in list(range(27, steps)) + [3, 0]:
            assert torch.equal(resumed.batch(s), full[s]), f"step {s} differs after restart"
            assert torch.equal(plain.batch(s), full[s])
    # Each batch is the float conversion of the rows its indices name.
    for s in (0, 20, 59):
        want = torch.from_numpy(x[StreamBatches(ds, B, seed=5).indices(s)]).float() / 255
        assert torch.equal(full[s], want)
    other = StreamBatches(ds, B, seed=6, prefetch=0)
    assert not torch.equal(other.batch(0), full[0])


def test_each_epoch_visits_every_row_once_and_is_shuffled(zds):
    ds, _ = zds
    stream = StreamBatches(ds, 40, seed=1, prefetch=0)  # 1000 / 40 = 25 steps per epoch
    for epoch in range(2):
        seen = np.concatenate([stream.indices(s) for s in range(25 * epoch, 25 * (epoch + 1))])
        assert sorted(seen.tolist()) == list(range(1000))
        assert not (np.diff(seen) == 1).all()
    first, second = (np.concatenate([stream.indices(s) for s in range(a, a + 25)]) for a in (0, 25))
    assert not np.array_equal(first, second), "every epoch has its own order"
    # A batch that straddles two epochs holds the end of one and the start of the next.
    odd = StreamBatches(ds, 300, seed=1, prefetch=0)
    tail = np.concatenate([odd.indices(s) for s in range(4)])  # 1,200 positions
    assert sorted(tail[:1000].tolist()) == list(range(1000)) and len(set(tail[1000:].tolist())) == 200


def test_memory_stays_a_few_chunks_and_each_chunk_is_read_once_per_epoch(zds):
    ds, _ = zds
    reads_before = ds.reads
    with StreamBatches(ds, 32, seed=2, mix_chunks=3, prefetch=2) as stream:
        for s in range(1000 // 32 * 2):  # about two epochs
            stream.batch(s)
    assert stream.max_cached <= stream.cache_chunks == 6
    # ds has 16 chunks: about 2 epochs read each chunk about twice, never more than once per epoch + prefetch.
    assert 2 * ds.n_chunks - 2 <= stream.chunk_reads <= 2 * ds.n_chunks + 2
    assert ds.reads - reads_before == stream.chunk_reads
    # Batches mix rows from several chunks (not one chunk at a time).
    assert len(np.unique(stream.indices(5) // ds.chunk_rows)) > 1


def test_in_memory_dataset_streams_the_same_way():
    torch.manual_seed(0)
    ds = Dataset("mem", torch.rand(100, 2), None, chunk_rows=16)
    stream = StreamBatches(ds, 10, seed=0, prefetch=1)
    b = stream.batch(3)
    assert torch.equal(b, ds.data[torch.from_numpy(stream.indices(3))])
    stream.close()
    # A plain tensor gets the same treatment (the training loop's entry point).
    from vegan.data import batch_source

    with batch_source(ds.data, 10, seed=0, prefetch=0) as src:
        seen = np.concatenate([src.indices(s) for s in range(10)])
        assert sorted(seen.tolist()) == list(range(100))
        assert torch.equal(src.batch(4), ds.data[torch.from_numpy(src.indices(4))])
    with pytest.raises(ValueError, match="batch_size"):
        StreamBatches(ds, 0, seed=0)
