"""Progress of the long loops (training steps, OT iterations, chunks, samples), shown three ways.

On a terminal: a tqdm bar, as before. Anywhere else (a log file, ``| cat``, a batch job, a Prefect
worker's output) a bar is hundreds of carriage-return redraws per stage, so it becomes a few plain
lines instead: the start, one line per ~10 % of the total (or at least every minute), and the end,
each with the rate and the ETA. And an orchestrator that wants progress in its own UI (the Prefect
tasks publish progress artifacts, ``tasks/progress.py``) registers a listener with :func:`listen`:
the library never imports it, it only calls it with a :class:`ProgressEvent` at the same moments.

Listeners hear every loop, whether or not it is displayed (``enabled=False`` or ``--quiet`` only
silence stderr).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

STEP_FRACTION = 0.1
"""Plain mode: a line each time another tenth of the total is done."""

MIN_INTERVAL = 60.0
"""Plain mode: a line at least this often (seconds) while a loop runs, even between tenths: an OT
solve that converges long before ``max_iter`` still says it is alive."""


@dataclass(frozen=True)
class ProgressEvent:
    """Where one loop stands; ``phase`` is ``start``, ``update`` or ``end``."""

    desc: str
    n: int
    total: int
    unit: str
    elapsed: float
    phase: str
    postfix: dict[str, Any] = field(default_factory=dict)
    initial: int = 0  # done before this process started (a resumed loop): not part of the rate

    @property
    def percent(self) -> float:
        return 100.0 * min(self.n, self.total) / self.total if self.total else 100.0

    @property
    def rate(self) -> float | None:
        """Units per second in this process (None before any unit and in the first instant)."""
        done = self.n - self.initial
        return done / self.elapsed if done > 0 and self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds to the total at the rate so far (None without a rate)."""
        rate = self.rate
        return max(self.total - self.n, 0) / rate if rate else None

    def line(self) -> str:
        """One plain line, e.g. ``train ae: 45/150 it (30%), 14 s, 3.2 it/s, ETA 33 s, loss=6.4``."""
        rate = f"{self.rate:.3g} {self.unit}/s" if self.rate else f"- {self.unit}/s"
        if self.phase == "start":
            head = f"start, {self.total} {self.unit}" + (f" ({self.initial} done before)" if self.initial else "")
            return f"{self.desc}: {head}"
        where = f"{self.n}/{self.total} {self.unit} ({self.percent:.0f}%), {_seconds(self.elapsed)}, {rate}"
        tail = "" if self.phase == "end" or self.eta is None else f", ETA {_seconds(self.eta)}"
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {'done, ' if self.phase == 'end' else ''}{where}{tail}{extra}"


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


Listener = Callable[[ProgressEvent], None]
T = TypeVar("T")
_listeners: list[Listener] = []
_lock = threading.Lock()


@contextmanager
def listen(callback: Listener) -> Iterator[Listener]:
    """Call ``callback(event)`` for every loop's start, tenths (or minutes) and end while the block runs.

    A listener that raises is dropped with a warning on stderr: progress reporting never fails a stage.
    """
    with _lock:
        _listeners.append(callback)
    try:
        yield callback
    finally:
        with _lock:
            if callback in _listeners:
                _listeners.remove(callback)


def _notify(event: ProgressEvent) -> None:
    with _lock:
        listeners = list(_listeners)
    for callback in listeners:
        try:
            callback(event)
        except Exception as exc:  # noqa: BLE001 - a display must not break the computation
            with _lock:
                if callback in _listeners:
                    _listeners.remove(callback)
            print(f"progress listener {callback!r} dropped: {type(exc).__name__}: {exc}", file=sys.stderr)


class Progress:
    """The tqdm subset the loops use (``update``, ``set_postfix``, ``close``, a context manager).

    Draws a tqdm bar when ``enabled`` and ``file`` is a terminal, plain lines when ``enabled`` and it
    is not, nothing otherwise; tells the listeners in every case.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        initial: int = 0,
        unit: str = "it",
        leave: bool = True,
        file: TextIO | None = None,
    ):
        self.total, self.desc, self.unit, self.initial = int(total), desc, unit, int(initial)
        self.n = self.initial
        self.postfix: dict[str, Any] = {}
        self.file = file if file is not None else sys.stderr
        self._bar = None
        self._plain = False
        if enabled and _isatty(self.file):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=self.file
            )
        else:
            self._plain = enabled
        self._t0 = time.monotonic()
        self._last_time = self._t0
        self._next = self._next_mark(self.n)
        self._closed = False
        self._emit("start")

    # ------------------------------------------------------------ tqdm's API
    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        if self.n >= self._next or now - self._last_time >= MIN_INTERVAL:
            if self.n < self.total:  # the end gets its own line at close
                self._emit("update")
            self._next = self._next_mark(self.n)

    def set_postfix(self, postfix: dict[str, Any], refresh: bool = False) -> None:
        self.postfix = dict(postfix)
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=refresh)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        self._emit("end")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals
    def _next_mark(self, n: int) -> int:
        step = max(1, round(self.total * STEP_FRACTION))
        return (n // step + 1) * step

    def _emit(self, phase: str) -> None:
        now = time.monotonic()
        self._last_time = now
        event = ProgressEvent(
            self.desc, self.n, self.total, self.unit, now - self._t0, phase, dict(self.postfix), self.initial
        )
        if self._plain:  # no clock time: loggers that collect the line (Prefect's log_prints) add their own
            print(event.line(), file=self.file, flush=True)
        _notify(event)


def _isatty(file: TextIO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def track(
    items: Iterable[T],
    desc: str,
    enabled: bool = True,
    total: int | None = None,
    unit: str = "it",
    leave: bool = True,
    file: TextIO | None = None,
) -> Iterator[T]:
    """``for x in track(items, "features"):``: a :class:`Progress` over an iterable (``tqdm(items)``)."""
    n = total if total is not None else len(items)  # type: ignore[arg-type]
    with Progress(n, desc, enabled=enabled, unit=unit, leave=leave, file=file) as bar:
        for item in items:
            yield item
            bar.update(1)
