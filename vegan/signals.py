"""Keep Python's signal handler safe to run after AMX use and after OpenVINO calls.

On CPUs with AMX, the first AMX use (OpenVINO's compiled Inception, oneDNN's bf16 kernels)
enlarges every thread's saved register state. glibc's lazy symbol binding then runs inside
the first signal handler of the process (CPython's ``trip_signal`` resolving its callees) with
a save area sized before AMX was on, and the process dies with SIGSEGV instead of handling
the signal: a SIGTERM meant to checkpoint a GAN run, or Ctrl-C, kills it (measured here: the
OpenVINO test, then the GAN SIGTERM test, segfaulted every time; with ``LD_BIND_NOW=1`` it passed).

:func:`resolve_signal_path` delivers one harmless signal (SIGURG, ignored by default) to a
Python handler before any of that, so the handler's symbols are bound while the save area
is still small; later signals take the bound path. ``import vegan`` calls it once.

A second way to the same crash, seen on an AMD EPYC (Zen 4, no AMX) where the fix above did
not help: OpenVINO's CPU plugin gives the calling thread its own alternate signal stack
(11,568 bytes, where faulthandler's was 16,880) and leaves it registered; the next signal
then died with SIGSEGV as it was delivered (gdb: in ``raise`` itself, before any handler ran).
:func:`keep_signal_stack` puts the thread's
alternate stack back after each OpenVINO call (vegan.metrics.runtimes).
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_done = False


def resolve_signal_path() -> bool:
    """Run CPython's signal handler once (SIGURG to a no-op handler); True when it ran now.

    Only the main thread may install handlers: elsewhere nothing happens (and a later call from
    the main thread still can)."""
    global _done
    if _done or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGURG"):
        return False
    previous = signal.signal(signal.SIGURG, lambda signum, frame: None)
    try:
        signal.raise_signal(signal.SIGURG)
    finally:
        signal.signal(signal.SIGURG, previous)
    _done = True
    return True


class _SignalStack(ctypes.Structure):  # glibc's stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # no C library to ask (not a POSIX process): nothing to keep
        return None


def signal_stack() -> tuple[int, int, int]:
    """This thread's alternate signal stack: ``(address, flags, size)`` (flags 2: none in use)."""
    libc, st = _libc(), _SignalStack()
    if libc is None or not hasattr(libc, "sigaltstack") or libc.sigaltstack(None, ctypes.byref(st)) != 0:
        return (0, 2, 0)
    return (st.ss_sp or 0, st.ss_flags, st.ss_size)


@contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Run the block, then restore this thread's alternate signal stack if the block replaced it."""
    before = signal_stack()
    try:
        yield
    finally:
        if signal_stack() != before and before[1] & 1 == 0:  # never while running on it (SS_ONSTACK)
            libc = _libc()
            libc.sigaltstack(ctypes.byref(_SignalStack(before[0] or None, before[1], before[2])), None)
