"""The run's Dask cluster: one client, opened once, handed to every heavy stage.

``cluster.address`` in :class:`~vegan.config.PipelineConfig` says where heavy
stages run: ``none`` (in this process, no Dask), ``local`` (a ``LocalCluster``
of worker processes living as long as the run) or a scheduler address
(``tcp://host:8786``: workers started by ``dask worker``, dask-jobqueue,
dask-kubernetes). :func:`connect` opens it; the pipeline keeps the client in
:attr:`vegan.stages.context.Run.client` for every stage, and also records it as
the process's *active* client (:func:`active_client`) so that orchestrator
tasks that rebuild their ``Run`` (``tasks/stages.py``) find the same one.

:class:`Tasks` is the one way heavy library code submits work: the same calls run
on the client, or in this process when there is none, in the same order, so
results do not depend on whether a cluster is used (OT counting, code
statistics, generation).

Torch in a worker gets one thread per worker thread: a worker process already
is the unit of parallelism, and torch's default (one thread per core) in each
of several workers only oversubscribes the cores.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from vegan.config import ClusterConfig

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

log = logging.getLogger(__name__)

_ACTIVE: list["Client"] = []


class ClusterError(RuntimeError):
    """The configured Dask cluster cannot be started or reached."""


def local_cluster(n_workers: int, threads_per_worker: int = 1, **kwargs) -> "LocalCluster":
    """A ``LocalCluster`` of ``n_workers`` worker processes whose workers never pause at their memory limit.

    Dask pauses a worker at 80 % of its ``memory_limit`` until spilling brings it back down. A vegan
    worker's memory is torch, a model and their buffers: unmanaged memory that spilling cannot
    release, so a paused worker stays paused, and a stage whose workers are all paused waits
    forever without an error (reproduced with 700 MiB workers on the ot and generate stages; a CI
    run of that test with 1 GiB workers hung with no error, most likely so). Without the pause, a
    worker that really outgrows its limit is restarted by its nanny at 95 %, its task is retried,
    and after the retries the stage fails with ``KilledWorker`` naming the task. ``kwargs`` go to
    ``LocalCluster`` (``memory_limit``, ``resources``, ``env``, ``dashboard_address``: None unless
    given).
    """
    import dask
    from distributed import LocalCluster

    kwargs.setdefault("dashboard_address", None)
    # Each nanny copies the config when it is created, and hands it to its worker process.
    with dask.config.set({"distributed.worker.memory.pause": False}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, **kwargs)


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
    from distributed import Client

    cluster = None
    if cfg.address == "local":
        threads = str(cfg.threads_per_worker)
        kwargs = {} if cfg.memory_limit is None else {"memory_limit": cfg.memory_limit}
        try:
            cluster = local_cluster(
                cfg.n_workers,
                cfg.threads_per_worker,
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


# --------------------------------------------------------------- running tasks
class _Done:
    """A finished local "future": what :class:`Tasks` returns when there is no client."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value

    def cancel(self) -> None:
        pass


def _same(x):
    return x


def _value(x):
    if isinstance(x, _Done):
        return x.value
    if isinstance(x, (list, tuple)):
        return type(x)(_value(v) for v in x)
    return x


_END = object()

SCATTER_TRIES = 4
"""Tries of a scatter whose connection a dying worker closed (:meth:`Tasks.scatter`)."""


def _cancel(x) -> None:
    if isinstance(x, (list, tuple)):
        for v in x:
            _cancel(v)
    elif hasattr(x, "cancel"):
        x.cancel()


class Tasks:
    """The one way heavy code submits work: on the run's Dask client, or in this process with no client.

    The same calls (``submit``, ``gather``, ``ordered``, ``tree``) run the same functions in the same
    order either way, so a result does not depend on whether a cluster is used. Without a client,
    ``submit`` runs the function at once and returns a finished stand-in for a future; with one,
    every task is impure (``pure=False``), retried ``retries`` times when its worker dies, and
    carries ``resources`` (``{"GPU": 1}`` keeps it on GPU workers).
    """

    def __init__(self, client: "Client | None" = None, resources: dict | None = None, retries: int = 2):
        self.client, self.resources, self.retries = client, resources, retries

    def submit(self, fn, *args, light: bool = False, worker: int | None = None, **kwargs):
        """``fn(*args, **kwargs)`` as a task. ``light``: bookkeeping that may run on any worker (no resources).

        ``worker``: prefer worker number ``worker`` (modulo the count; another takes over when it is gone),
        so that the tasks of one target shard keep finding their rows loaded.
        """
        if self.client is None:
            return _Done(fn(*[_value(a) for a in args], **{k: _value(v) for k, v in kwargs.items()}))
        where = {}
        if worker is not None:
            addresses = self.addresses()
            where = {"workers": [addresses[worker % len(addresses)]], "allow_other_workers": True}
        return self.client.submit(
            fn,
            *args,
            pure=False,
            retries=self.retries,
            resources=None if light else self.resources,
            **where,
            **kwargs,
        )

    def gather(self, futures: list) -> list:
        if self.client is None:
            return [_value(f) for f in futures]
        return self.client.gather(futures)

    def scatter(self, value, broadcast: bool = True):
        """Ship ``value`` to every worker once (``broadcast=False``: to one), as a future.

        ``hash=False``: a content-hashed key could be shared with an earlier scatter of equal data,
        whose release would drop it. A worker that dies while the data is on its way closes its
        connection mid-scatter (``CommClosedError``, an ``OSError``; seen in CI when a worker was
        killed during the eval stage): the scatter is redone on the workers left, up to
        ``SCATTER_TRIES`` times, waiting a little longer each time for the scheduler to notice the loss.
        """
        if self.client is None:
            return value
        for attempt in range(1, SCATTER_TRIES + 1):
            try:
                return self.client.scatter(value, broadcast=broadcast, hash=False)
            except OSError as exc:
                if attempt == SCATTER_TRIES:
                    raise
                log.warning("scatter failed (%s: %s); retrying on the workers left", type(exc).__name__, exc)
                time.sleep(0.5 * attempt)
        raise AssertionError("unreachable")

    def keep(self, value):
        """``value`` as a task's result that the scheduler can make again: when every worker holding it dies
        it is recomputed, where scattered data, which has no recipe, would be lost and every task needing it
        cancelled ("lost dependencies"). For inputs of a stage that must survive a killed worker."""
        return value if self.client is None else self.client.submit(_same, value, pure=False)

    def ordered(self, start, jobs: Iterable, lookahead: int | Callable[[], int] | None = None) -> Iterator:
        """``start(job)`` (which submits a job's tasks and returns the future of its result) in job order,
        at most ``lookahead`` jobs ahead of the consumer (a callable is asked again before each
        submission, so a consumer that knows how many more results it needs can say so).

        Without a client each job runs when the consumer asks for it. When the consumer stops early,
        the jobs still pending are cancelled.
        """
        if self.client is None:
            for job in jobs:
                yield start(job)
            return
        cap = max(2, 2 * sum(self.client.nthreads().values()))
        ahead = lookahead if callable(lookahead) else (lambda: lookahead or cap)
        pending: deque = deque()
        it = iter(jobs)
        try:
            while True:
                while len(pending) < min(cap, max(1, ahead())):
                    job = next(it, _END)
                    if job is _END:
                        break
                    pending.append(start(job))
                if not pending:
                    return
                yield pending.popleft()
        finally:
            for fut in pending:
                _cancel(fut)

    def tree(self, fn, items: list, *args, light: bool = False):
        """``fn`` applied pairwise, left to right, level by level: one fixed reduction order for any cluster."""
        if not items:
            raise ValueError("nothing to reduce")
        level = list(items)
        while len(level) > 1:
            nxt = [self.submit(fn, level[i], level[i + 1], *args, light=light) for i in range(0, len(level) - 1, 2)]
            level = nxt + ([level[-1]] if len(level) % 2 else [])
        return level[0]

    def _workers(self) -> dict[str, dict]:
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        if self.resources:
            fit = {a: w for a, w in workers.items() if all(w.get("resources", {}).get(k) for k in self.resources)}
            workers = fit or workers
        return workers

    def addresses(self) -> list[str]:
        """Addresses of the workers that take this executor's tasks, sorted."""
        if getattr(self, "_addresses", None) is None:
            self._addresses = sorted(self._workers())
        return self._addresses

    def worker_memory_limit(self) -> int | None:
        """The smallest memory limit (bytes) among the workers that take this executor's tasks, or None."""
        if self.client is None:
            return None
        limits = [int(w.get("memory_limit") or 0) for w in self._workers().values()]
        limits = [v for v in limits if v > 0]
        return min(limits) if limits else None

    def n_workers(self) -> int:
        return 1 if self.client is None else max(1, len(self._workers()))
