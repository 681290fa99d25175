"""The run's Dask cluster: one client, opened once, handed to every heavy stage.

``cluster.address`` in :class:`~vegan.config.PipelineConfig` says where heavy
stages run: ``none`` (in this process, no Dask), ``local`` (a ``LocalCluster``
of worker processes living as long as the run) or a scheduler address
(``tcp://host:8786``: workers started by ``dask worker``, dask-jobqueue,
dask-kubernetes). :func:`connect` opens it; the pipeline keeps the client in
:attr:`vegan.stages.context.Run.client` for every stage, and also records it as
the process's *active* client (:func:`active_client`) so that orchestrator
tasks that rebuild their ``Run`` (``tasks/stages.py``) find the same one.

Torch in a worker gets one thread per worker thread: a worker process already
is the unit of parallelism, and torch's default (one thread per core) in each
of several workers only oversubscribes the cores.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Iterator

from vegan.config import ClusterConfig

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

_ACTIVE: list["Client"] = []


class ClusterError(RuntimeError):
    """The configured Dask cluster cannot be started or reached."""


def active_client() -> "Client | None":
    """The client of the innermost :func:`connect` still open in this process, or None."""
    return _ACTIVE[-1] if _ACTIVE else None


class _TorchThreadsBase:
    """Worker plugin: torch's intra-op threads = the worker's threads, on every worker, including ones
    (re)started after the plugin was registered. Made a real ``WorkerPlugin`` by :func:`__getattr__`, so that
    importing this module does not import ``distributed``."""

    name = "vegan-torch-threads"

    def setup(self, worker) -> None:
        import torch

        torch.set_num_threads(max(1, int(getattr(worker.state, "nthreads", 1))))


_PLUGIN: list[type] = []


def __getattr__(name: str):
    # ``TorchThreads`` is looked up here by pickle on the workers too: it must be a module attribute.
    if name != "TorchThreads":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _PLUGIN:
        from distributed.diagnostics.plugin import WorkerPlugin

        _PLUGIN.append(type("TorchThreads", (_TorchThreadsBase, WorkerPlugin), {"__module__": __name__}))
    return _PLUGIN[0]


@contextlib.contextmanager
def connect(cfg: ClusterConfig) -> Iterator["Client | None"]:
    """Open the cluster ``cfg`` names for the duration of the block; yields None for ``address="none"``.

    ``local`` starts a ``LocalCluster`` of ``n_workers`` processes (``threads_per_worker`` threads,
    ``memory_limit`` each) and shuts it down on exit; an address connects to a running scheduler and
    only closes the connection. Raises :class:`ClusterError` naming the address when it cannot connect.
    """
    if cfg.address == "none":
        yield None
        return
    from distributed import Client, LocalCluster

    cluster = None
    if cfg.address == "local":
        threads = str(cfg.threads_per_worker)
        kwargs = {} if cfg.memory_limit is None else {"memory_limit": cfg.memory_limit}
        try:
            cluster = LocalCluster(
                n_workers=cfg.n_workers,
                threads_per_worker=cfg.threads_per_worker,
                processes=True,
                dashboard_address=None,
                env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
                **kwargs,
            )
        except Exception as exc:  # one clear error for a bad memory limit, no free port, ...
            raise ClusterError(
                f"cannot start a local Dask cluster of {cfg.n_workers} workers: {type(exc).__name__}: {exc}"
            ) from exc
        client = Client(cluster)
        where = f"local cluster {cluster.scheduler_address}"
    else:
        try:
            client = Client(cfg.address, timeout=cfg.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot connect to the Dask scheduler at {cfg.address} within {cfg.connect_timeout:g} s "
                f"({type(exc).__name__}: {exc}); start it (`dask scheduler`) or change cluster.address"
            ) from None
        where = f"scheduler {cfg.address}"
    try:
        client.register_plugin(__getattr__("TorchThreads")())
        log.info("heavy stages run on the %s (%d workers)", where, len(client.scheduler_info()["workers"]))
        _ACTIVE.append(client)
        try:
            yield client
        finally:
            _ACTIVE.remove(client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
