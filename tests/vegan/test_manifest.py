import json
import socket
import subprocess
import sys
import time

import pytest

from vegan.config import load_config
from vegan.manifest import Manifest, RunLock, RunLockedError
from vegan.storage import Storage


def test_status_follows_done_markers(tmp_path):
    st = Storage(str(tmp_path))
    m = Manifest(st, load_config("tiny"))
    m.set_status("ae", "running")
    assert m.status()["ae"]["status"] == "running"
    m.mark_done("ae", {"steps": 3})
    m.set_status("latents", "failed", error="boom")
    s = m.status()
    assert s["ae"]["status"] == "done" and s["latents"] == {**s["latents"], "status": "failed", "error": "boom"}
    assert s["ot"]["status"] == "pending"
    st.rm(m.done_marker("ae"))  # outputs deleted by hand: the stage must rerun
    assert m.status()["ae"]["status"] == "pending"
    # a config change gives new keys: nothing of the old run counts as done
    other = Manifest(st, load_config("tiny", overrides=["data.limit=100"]))
    assert all(e["status"] == "pending" for e in other.status().values())
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["ae"]["key"] == m.keys["ae"]


def test_lock_refuses_a_second_live_run_and_takes_over_stale_ones(tmp_path):
    st = Storage(str(tmp_path))
    with RunLock(st):
        with pytest.raises(RunLockedError, match="another run .* is writing to"):
            RunLock(st).acquire()
    assert not st.exists("lock.json")  # released
    st.write_json("lock.json", {"owner": "dead-host:1:x", "heartbeat": time.time() - 3600, "since": "long ago"})
    with RunLock(st, stale_after=60) as lock:
        assert st.read_json("lock.json")["owner"] == lock.owner
    # a killed process on this host: fresh heartbeat, but its pid is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"owner": "x", "host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time(), "since": "now"}
    st.write_json("lock.json", holder)
    with RunLock(st) as lock:
        assert st.read_json("lock.json")["owner"] == lock.owner
