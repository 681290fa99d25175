"""``import vegan`` runs CPython's signal handler once, before any AMX use (see vegan.signals).

The crash it prevents needs AMX and an earlier OpenVINO run in the same process: in this suite the
OpenVINO test (tests/vegan/metrics/test_runtimes.py) runs before the GAN SIGTERM test
(tests/vegan/test_gan.py), which segfaulted on AMX machines without this. OpenVINO's dangling
alternate signal stack (the same crash on AMD Zen 4) is checked by the OpenVINO test itself."""

import subprocess
import sys


def test_import_runs_the_signal_path_once_and_restores_the_handler():
    code = (
        "import signal, threading\n"
        "import vegan\n"
        "from vegan import signals\n"
        "assert signals._done\n"
        "assert signal.getsignal(signal.SIGURG) is signal.SIG_DFL\n"
        "assert signals.resolve_signal_path() is False\n"  # once per process
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda *a: got.append(1))\n"
        "signal.raise_signal(signal.SIGTERM)\n"
        "assert got == [1]\n"
        "t = threading.Thread(target=lambda: got.append(signals.resolve_signal_path()))\n"
        "t.start(); t.join()\n"
        "assert got == [1, False]\n"  # never from another thread (handlers live in the main thread)
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
