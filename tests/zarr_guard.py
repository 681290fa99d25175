"""Zarr helpers for tests of the scale-out paths: the driver process must never read the codes, and
which chunks of a store are finished."""

from __future__ import annotations

import contextlib
from pathlib import Path

import zarr


class CodesRead(AssertionError):
    pass


def forbid_code_reads(monkeypatch, d: int) -> None:
    """Any read of a (n, d) Zarr array's data in THIS process fails (workers are other processes)."""
    for name in ("get_basic_selection", "get_orthogonal_selection", "get_coordinate_selection", "get_mask_selection"):
        real = getattr(zarr.Array, name)

        def guarded(self, *args, _real=real, **kwargs):
            if self.ndim == 2 and self.shape[1] == d:
                raise CodesRead(f"the driver read codes from {self.store}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(zarr.Array, name, guarded)


@contextlib.contextmanager
def no_codes_here(monkeypatch, d: int):
    """:func:`forbid_code_reads` for the duration of a ``with`` block."""
    forbid_code_reads(monkeypatch, d)
    try:
        yield
    finally:
        monkeypatch.undo()


def finished_chunks(folder: Path) -> list[int]:
    """Indices of the chunk files in ``folder`` (a 1-D array's ``c/``) that are written.

    A write in flight, or one cut short by a kill, is a ``<chunk>.<uuid>.partial`` file: not counted.
    """
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
