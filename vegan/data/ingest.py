"""Convert an image folder, a ``.npz`` or a named dataset into a chunked Zarr dataset.

``ingest(src, dest, chunk_rows=...)`` writes the layout described in
:mod:`vegan.data.zarrset`. Work is cut into row chunks, and one function writes
one chunk: it reads its own source rows (decodes its own image files), writes
its rows of ``x``/``y``, then the chunk's digest, and only then its
``complete`` marker. So:

* with a Dask ``client`` every chunk is a task that writes straight to the
  store; the driver only holds the file list, never the images;
* a rerun skips chunks whose marker is set (resumable), rewrites any chunk that
  was interrupted (each Zarr chunk object is put whole: atomic per chunk), and
  a finished store is left untouched (idempotent);
* a store made with other settings (source, shape, chunking, resize) is refused,
  never mixed.

Images are stored as ``uint8`` (N, C, H, W). Arrays already in ``uint8`` stay so;
float image arrays become ``uint8`` when that is lossless (values are k/255, as
for MNIST) and stay ``float32`` otherwise (``dtype="uint8"`` forces rounding).
Vector datasets (grid2d, float features: shape (N, D)) are stored as
``float32``; :func:`vegan.data.base.to_float` leaves them unchanged.
"""

from __future__ import annotations

import hashlib
import io
import math
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from vegan.data.base import DatasetError
from vegan.data.sources import read_npz
from vegan.data.zarrset import is_local_url, zarr_store
from vegan.digests import add_digests

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FORMAT_VERSION = 1


# ----------------------------------------------------------------- planning
@dataclass
class IngestPlan:
    """What to write: the store's arrays and attributes, and how to make one chunk.

    ``chunk_fn(dest, storage_options, c, lo, *chunk_args(lo, hi))`` writes chunk
    ``c`` (rows ``[lo, hi)``) with :func:`write_chunk` and returns 1 (0 when the
    chunk was already complete). Any source (e.g. the synthetic images of
    :mod:`vegan.data.synthetic`) can be written by :func:`write_plan`.
    """

    n: int
    item_shape: tuple[int, ...]
    dtype: str
    kind: Literal["image", "vector"]
    has_labels: bool
    attrs: dict[str, Any]
    chunk_fn: Callable[..., int]
    chunk_args: Callable[[int, int], tuple] = field(repr=False)  # (lo, hi) -> extra args of chunk_fn


def _source_fs(src: str, storage_options: dict | None):
    import fsspec

    from vegan.storage import storage_options_from_env

    opts = storage_options if storage_options is not None else storage_options_from_env(src)
    try:
        fs, path = fsspec.core.url_to_fs(src, **({} if is_local_url(src) else opts))
    except (ValueError, ImportError, TypeError) as exc:
        raise DatasetError(f"cannot open source URL {src!r}: {type(exc).__name__}: {exc}") from exc
    return fs, path, opts


def _array_plan(name: str, x: np.ndarray, y: np.ndarray | None, dtype: str, attrs: dict) -> IngestPlan:
    x = np.asarray(x)
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise DatasetError(f"{name}: expected (N, D), (N, H, W) or (N, C, H, W) arrays, got shape {x.shape}")
    if len(x) == 0:
        raise DatasetError(f"{name} is empty")
    if y is not None:
        y = np.asarray(y).astype(np.int64)
        if len(y) != len(x):
            raise DatasetError(f"{name}: {len(x)} examples but {len(y)} labels")
    kind = "image" if x.ndim == 4 else "vector"
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DatasetError(f"{name} contains NaN or infinite values")
    if kind == "image" and x.dtype == np.float32 and dtype != "float32":
        in_range = bool(x.min() >= 0 and x.max() <= 1)
        if dtype == "uint8" and not in_range:
            raise DatasetError(f"{name}: dtype='uint8' needs float images in [0, 1]")
        q = np.rint(x * 255.0) if in_range else None
        if q is not None and (dtype == "uint8" or np.allclose(q / 255.0, x, rtol=0, atol=1e-6)):
            x = q.astype(np.uint8)  # lossless for k/255 data such as MNIST; forced rounding otherwise
    elif x.dtype == np.uint8 and (kind == "vector" or dtype == "float32"):
        x = x.astype(np.float32) / (255.0 if kind == "image" else 1.0)
    return IngestPlan(
        n=len(x),
        item_shape=tuple(x.shape[1:]),
        dtype=str(x.dtype),
        kind=kind,
        has_labels=y is not None,
        attrs=attrs,
        chunk_fn=_array_chunk,
        chunk_args=lambda lo, hi: (x[lo:hi], None if y is None else y[lo:hi]),
    )


def _named_plan(src: str, split: str, root: str | None, limit: int | None, dtype: str, seed: int) -> IngestPlan:
    from vegan.config import DataConfig
    from vegan.data.sources import _NAMED

    x, y = _NAMED[src](DataConfig(name=src, split=split, root=root, limit=limit, seed=seed))
    if limit is not None:
        x, y = x[:limit], (None if y is None else y[:limit])
    return _array_plan(
        src, x, y, dtype, {"source": src, "split": split, "limit": limit, **({"seed": seed} if src == "grid2d" else {})}
    )


def _npz_plan(src: str, storage_options: dict | None, limit: int | None, dtype: str) -> IngestPlan:
    fs, path, _ = _source_fs(src, storage_options)
    if not fs.exists(path):
        raise DatasetError(f"source not found: {src}")
    x, y = read_npz(fs, path, src)
    if limit is not None:
        x, y = x[:limit], (None if y is None else y[:limit])
    return _array_plan(src, x, y, dtype, {"source": src, "limit": limit})


def _image_mode(img) -> str:
    """Grey-level images stay one channel; everything else (RGB, RGBA, palette, CMYK) becomes RGB."""
    return "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"


def _decode(fs, path: str, mode: str, resize: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with fs.open(path, "rb") as f:
            img = Image.open(io.BytesIO(f.read()))
            img = img.convert(mode)
    except Exception as exc:
        raise DatasetError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    if resize is not None:
        h, w = resize
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _folder_plan(src: str, storage_options: dict | None, resize, limit: int | None) -> IngestPlan:
    fs, root, opts = _source_fs(src, storage_options)
    try:
        exists = fs.exists(root)
    except Exception as exc:
        raise DatasetError(f"cannot reach source {src}: {type(exc).__name__}: {exc}") from exc
    if not exists:
        raise DatasetError(f"source not found: {src}")
    if not fs.isdir(root):
        raise DatasetError(f"source {src} is neither a folder of images, a .npz, a .zarr nor a named dataset")
    root = root.rstrip("/")
    files = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise DatasetError(f"no .png/.jpg/.jpeg images under {src} (searched recursively)")
    if limit is not None:
        files = files[:limit]
    rel = [posixpath.relpath(p, root) for p in files]
    in_class_folders = all("/" in r for r in rel)
    label_names = sorted({r.split("/", 1)[0] for r in rel}) if in_class_folders else []
    index = {name: i for i, name in enumerate(label_names)}
    labels = np.array([index[r.split("/", 1)[0]] for r in rel], dtype=np.int64) if in_class_folders else None

    from PIL import Image

    try:
        with fs.open(files[0], "rb") as f:
            first = Image.open(io.BytesIO(f.read()))
            first.load()
    except Exception as exc:
        raise DatasetError(f"cannot read image {files[0]}: {type(exc).__name__}: {exc}") from exc
    mode = _image_mode(first)
    h, w = (first.size[1], first.size[0]) if resize is None else resize
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    fs_spec = (protocol, {} if protocol in ("file", "local") else opts)
    attrs = {
        "source": src,
        "resize": None if resize is None else list(resize),
        "mode": mode,
        "first_file": files[0],
        "limit": limit,
        "files_sha256": hashlib.sha256("\n".join(rel).encode()).hexdigest()[:16],
    }
    return IngestPlan(
        n=len(files),
        item_shape=(1 if mode == "L" else 3, h, w),
        dtype="uint8",
        kind="image",
        has_labels=labels is not None,
        attrs={**attrs, "label_names": label_names},
        chunk_fn=_folder_chunk,
        chunk_args=lambda lo, hi: (
            fs_spec,
            files[lo:hi],
            None if labels is None else labels[lo:hi],
            mode,
            resize,
            files[0],
        ),
    )


def _plan(src: str, *, storage_options, resize, split, root, limit, dtype, seed) -> IngestPlan:
    from vegan.data.sources import _NAMED

    if not isinstance(src, str) or not src:
        raise DatasetError(f"source must be a non-empty string (folder, .npz URL or dataset name), got {src!r}")
    if src in _NAMED:
        return _named_plan(src, split, root, limit, dtype, seed)
    if src.rstrip("/").endswith(".npz"):
        return _npz_plan(src, storage_options, limit, dtype)
    if "/" not in src and "." not in src:
        raise DatasetError(f"unknown dataset {src!r}; use one of {', '.join(_NAMED)}, a .npz or an image folder")
    return _folder_plan(src, storage_options, resize, limit)


# --------------------------------------------------------------- chunk writers
def open_rw(dest: Any, storage_options: dict | None):
    import zarr

    return zarr.open_group(zarr_store(dest, storage_options), mode="r+")


def write_chunk(group, c: int, lo: int, x: np.ndarray, y: np.ndarray | None) -> None:
    """Rows, then digest, then the completion marker (:func:`vegan.digests.write_chunk`): a chunk without
    its marker is rewritten on resume."""
    from vegan.digests import write_chunk as seal

    seal(group, c, lo, {"x": x} if y is None else {"x": x, "y": np.asarray(y, dtype=np.int64)})


def _array_chunk(dest, storage_options, c: int, lo: int, x: np.ndarray, y: np.ndarray | None) -> int:
    group = open_rw(dest, storage_options)
    if group["complete"][c]:
        return 0
    write_chunk(group, c, lo, x, y)
    return 1


def _folder_chunk(dest, storage_options, c: int, lo: int, fs_spec, files, labels, mode, resize, first) -> int:
    import fsspec

    group = open_rw(dest, storage_options)
    if group["complete"][c]:
        return 0
    shape = tuple(group["x"].shape[1:])
    fs = fsspec.filesystem(fs_spec[0], **fs_spec[1])
    x = np.empty((len(files), *shape), dtype=np.uint8)
    for i, path in enumerate(files):
        img = _decode(fs, path, mode, resize)
        if img.shape != shape:
            raise DatasetError(
                f"image {path} is {img.shape[2]}x{img.shape[1]} (WxH) but {first} is {shape[2]}x{shape[1]}: "
                "images have different sizes; pass resize=(H, W) (`vegan ingest --resize HxW`)"
            )
        x[i] = img
    write_chunk(group, c, lo, x, labels)
    return 1


# ---------------------------------------------------------------- the store
def _create_or_check(dest, storage_options, plan: IngestPlan, chunk_rows: int, n_chunks: int):
    import zarr

    try:
        group = zarr.open_group(zarr_store(dest, storage_options), mode="a")
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot open destination {dest}: {type(exc).__name__}: {exc}") from exc
    attrs = {
        "vegan_dataset": FORMAT_VERSION,
        "shape": [plan.n, *plan.item_shape],
        "dtype": plan.dtype,
        "kind": plan.kind,
        "chunk_rows": chunk_rows,
        "label_names": plan.attrs.get("label_names", []),
        **{k: v for k, v in plan.attrs.items() if k != "label_names"},
    }
    if "x" in group:
        old = dict(group.attrs)
        diff = {k: (old.get(k), v) for k, v in attrs.items() if old.get(k) != v and k != "first_file"}
        if diff:
            what = "; ".join(f"{k}: store has {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise DatasetError(
                f"destination {dest} holds a dataset made with other settings ({what}): delete it or choose "
                "another destination"
            )
        return group
    shape = (plan.n, *plan.item_shape)
    group.create_array("x", shape=shape, chunks=(chunk_rows, *plan.item_shape), dtype=plan.dtype, fill_value=0)
    if plan.has_labels:
        group.create_array("y", shape=(plan.n,), chunks=(chunk_rows,), dtype="int64", fill_value=-1)
    add_digests(group, n_chunks, ["x", "y"] if plan.has_labels else ["x"])
    group.create_array("complete", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False)
    group.attrs.update({**attrs, "complete": False})
    return group


def ingest(
    src: str,
    dest: Any,
    *,
    chunk_rows: int = 4096,
    resize: tuple[int, int] | None = None,
    client=None,
    progress: bool = True,
    storage_options: dict | None = None,
    split: str = "train",
    root: str | None = None,
    limit: int | None = None,
    dtype: Literal["auto", "uint8", "float32"] = "auto",
    seed: int = 0,
    resources: dict | None = None,
) -> dict[str, Any]:
    """Write ``src`` (image folder URL, ``.npz`` URL or dataset name) as a Zarr dataset at ``dest``.

    ``dest`` is a URL (any fsspec protocol) or a Zarr store. ``resize=(H, W)``
    resizes every image (needed when sizes differ). Labels come from the ``.npz``
    (array ``y``), the named dataset, or the first folder level under ``src`` when
    every image sits in such a class folder (names sorted -> 0..K-1, kept in
    ``attrs["label_names"]``). With a Dask ``client`` each chunk is a task
    (``resources`` annotates them, e.g. ``{"GPU": 1}`` is never needed here).
    Returns counts of chunks written and skipped, rows, seconds.
    """
    if chunk_rows < 1:
        raise DatasetError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if resize is not None:
        if len(resize) != 2 or min(resize) < 1:
            raise DatasetError(f"resize must be (H, W) with positive sizes, got {resize!r}")
        resize = (int(resize[0]), int(resize[1]))
    t0 = time.perf_counter()
    plan = _plan(
        src, storage_options=storage_options, resize=resize, split=split, root=root, limit=limit, dtype=dtype, seed=seed
    )
    info = write_plan(
        plan,
        dest,
        chunk_rows=chunk_rows,
        client=client,
        progress=progress,
        storage_options=storage_options,
        resources=resources,
    )
    return {**info, "seconds": time.perf_counter() - t0}


def write_plan(
    plan: IngestPlan,
    dest: Any,
    *,
    chunk_rows: int,
    client=None,
    progress: bool = True,
    storage_options: dict | None = None,
    resources: dict | None = None,
) -> dict[str, Any]:
    """Create (or check) the store at ``dest`` and write every chunk not yet complete, then seal it."""
    from vegan.progress import Progress

    n_chunks = math.ceil(plan.n / chunk_rows)
    group = _create_or_check(dest, storage_options, plan, chunk_rows, n_chunks)
    info = {"n": plan.n, "shape": [plan.n, *plan.item_shape], "dtype": plan.dtype, "chunks": n_chunks}
    if group.attrs.get("complete"):
        return {**info, "chunks_written": 0, "chunks_skipped": n_chunks, "content_hash": group.attrs["content_hash"]}
    done = np.asarray(group["complete"][:])
    todo = [c for c in range(n_chunks) if not done[c]]
    written = 0
    with Progress(len(todo), "ingest", enabled=progress, unit="chunk") as bar:
        if client is None:
            for c in todo:
                lo, hi = c * chunk_rows, min(plan.n, (c + 1) * chunk_rows)
                written += plan.chunk_fn(dest, storage_options, c, lo, *plan.chunk_args(lo, hi))
                bar.update(1)
        else:
            from distributed import as_completed

            futures = []
            for c in todo:
                lo, hi = c * chunk_rows, min(plan.n, (c + 1) * chunk_rows)
                futures.append(
                    client.submit(
                        plan.chunk_fn,
                        dest,
                        storage_options,
                        c,
                        lo,
                        *plan.chunk_args(lo, hi),
                        pure=False,
                        retries=2,
                        resources=resources,
                    )
                )
            try:
                for fut in as_completed(futures):
                    written += fut.result()  # re-raises a chunk's DatasetError with its message
                    bar.update(1)
            finally:
                client.cancel([f for f in futures if not f.done()])
    digests = np.asarray(group["digest"][:])
    content = hashlib.sha256(str(info["shape"]).encode() + plan.dtype.encode() + digests.tobytes()).hexdigest()[:16]
    group.attrs.update({"complete": True, "content_hash": content})
    return {**info, "chunks_written": written, "chunks_skipped": n_chunks - written, "content_hash": content}


def parse_resize(text: str | None) -> tuple[int, int] | None:
    """``"64x48"`` -> (64, 48) as (H, W); None or "" -> None."""
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DatasetError(f"resize must look like HxW (e.g. 64x64), got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m vegan.data.ingest SRC DEST``: the library side of ``vegan ingest``."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="vegan ingest", description=ingest.__doc__.split("\n")[0])
    p.add_argument("src", help="image folder URL, .npz URL, or a dataset name (digits, mnist, ...)")
    p.add_argument("dest", help="Zarr URL to write, e.g. s3://bucket/data/mnist.zarr")
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--resize", default=None, help="HxW, e.g. 64x64 (needed when image sizes differ)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786); default: this process")
    args = p.parse_args(argv)
    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
    try:
        info = ingest(
            args.src,
            args.dest,
            chunk_rows=args.chunk_rows,
            resize=parse_resize(args.resize),
            client=client,
            split=args.split,
            limit=args.limit,
        )
    finally:
        if client is not None:
            client.close()
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
