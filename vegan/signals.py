"""Make Python's signal handler safe to run once AMX is on (a process-wide fix done at import).

On CPUs with AMX, the first AMX use (OpenVINO's compiled Inception, oneDNN's bf16 kernels)
enlarges every thread's saved register state. glibc's lazy symbol binding then runs inside
the first signal handler of the process (CPython's ``trip_signal`` resolving its callees) with
a save area sized before AMX was on, and the process dies with SIGSEGV instead of handling
the signal: a SIGTERM meant to checkpoint a GAN run, or Ctrl-C, kills it (measured here: the
OpenVINO test, then the GAN SIGTERM test, segfaulted every time; with ``LD_BIND_NOW=1`` it passed).

:func:`resolve_signal_path` delivers one harmless signal (SIGURG, ignored by default) to a
Python handler before any of that, so the handler's symbols are bound while the save area
is still small; later signals take the bound path. ``import vegan`` calls it once.
"""

from __future__ import annotations

import signal
import threading

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
