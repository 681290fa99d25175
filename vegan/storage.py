"""Run storage on any fsspec URL: atomic writes, JSON/torch helpers, Zarr stores.

Every stage reads and writes through a :class:`Storage`, so a run folder can live
on a laptop disk or in ``s3://bucket/prefix`` and any worker can pick up the next
stage. Writes are atomic: local files are written to a temporary name and
renamed; object stores publish an object only when its upload completes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from typing import Any

import fsspec


class StorageError(RuntimeError):
    """A storage URL cannot be used (bad URL, missing bucket or credentials)."""


def storage_options_from_env(url: str) -> dict[str, Any]:
    """Default fsspec options: for s3, honour ``AWS_ENDPOINT_URL`` / ``VEGAN_S3_ENDPOINT``."""
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("VEGAN_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"endpoint_url": endpoint}
    return {}


class Storage:
    """A folder on an fsspec filesystem, addressed by relative POSIX paths."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        if not url or not isinstance(url, str):
            raise StorageError(f"storage URL must be a non-empty string, got {url!r}")
        url = url.rstrip("/") or "/"
        self.storage_options = dict(storage_options or storage_options_from_env(url))
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **self.storage_options)
        except (ValueError, ImportError) as exc:
            raise StorageError(f"cannot open storage URL {url!r}: {exc}") from exc
        self.protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, (tuple, list)) else self.fs.protocol
        self.is_local = self.protocol in ("file", "local")
        if self.is_local:
            root = os.path.abspath(root)
        self.root = root
        self.url = root if self.is_local else f"{self.protocol}://{root}"

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    # ----------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        """Filesystem path (no protocol) of a relative path."""
        return posixpath.join(self.root, *[p.strip("/") for p in parts if p])

    def uri(self, *parts: str) -> str:
        """Full URL (with protocol) of a relative path."""
        p = self.path(*parts)
        return p if self.is_local else f"{self.protocol}://{p}"

    def sub(self, *parts: str) -> "Storage":
        return Storage(self.uri(*parts), self.storage_options)

    # ------------------------------------------------------------ inspection
    def check_writable(self) -> None:
        """Fail early, with a clear message, when the URL cannot be written."""
        probe = f".vegan-probe-{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"ok")
            self.fs.rm(self.path(probe))
        except Exception as exc:
            hint = ""
            if not self.is_local:
                hint = (
                    " (check that the bucket exists, that AWS credentials are set, and the endpoint:"
                    " AWS_ENDPOINT_URL / VEGAN_S3_ENDPOINT)"
                )
            raise StorageError(f"cannot write to storage {self.url}: {type(exc).__name__}: {exc}{hint}") from exc

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.path(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under ``rel``; empty when it does not exist."""
        full = self.path(rel)
        try:
            entries = self.fs.ls(full, detail=False)
        except FileNotFoundError:
            return []
        own = full.rstrip("/")
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != own)

    def rm(self, rel: str, recursive: bool = True) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=recursive)

    # ------------------------------------------------------------- bytes I/O
    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open(self.path(rel), "rb") as f:
                return f.read()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"not found in storage: {self.uri(rel)}") from exc

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic write: readers see the old content or the new one, never a partial file."""
        full = self.path(rel)
        if self.is_local:
            self._write_local(full, lambda f: f.write(data))
        else:
            # Object stores publish an object only once its upload has completed.
            self.fs.pipe_file(full, data)

    @staticmethod
    def _write_local(full: str, write: Any) -> None:
        """``write(f)`` into a temporary file next to ``full``, fsync, then rename it into place."""
        parent = posixpath.dirname(full)
        os.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".{posixpath.basename(full)}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, full)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def save_torch(self, rel: str, obj: Any) -> None:
        import torch

        if self.is_local:
            # Straight into the file: through a BytesIO a checkpoint of the OT solver's O(n) arrays
            # costs ~3 copies of them in memory (buffer growth, then getvalue), the driver's peak at
            # millions of codes.
            self._write_local(self.path(rel), lambda f: torch.save(obj, f))
            return
        buf = io.BytesIO()
        torch.save(obj, buf)
        self.write_bytes(rel, buf.getvalue())

    def load_torch(self, rel: str, map_location: Any = "cpu") -> Any:
        import torch

        if self.is_local:  # from the file: no bytes copy of it next to the loaded tensors
            path = self.path(rel)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"not found in storage: {self.uri(rel)}")
            return torch.load(path, map_location=map_location, weights_only=False)
        return torch.load(io.BytesIO(self.read_bytes(rel)), map_location=map_location, weights_only=False)

    # ------------------------------------------------------------------ zarr
    def zarr_store(self, rel: str, read_only: bool = False):
        """A Zarr v3 store for ``rel`` (LocalStore on disk, FsspecStore elsewhere)."""
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(self.path(rel), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.uri(rel), storage_options=self.storage_options, read_only=read_only
        )
