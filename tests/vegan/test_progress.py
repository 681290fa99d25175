"""Progress: plain lines off a terminal, a tqdm bar on one (a real pseudo-terminal), listeners always."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import termios

import pytest

from vegan import progress
from vegan.progress import Progress, listen, track


def test_off_a_terminal_a_loop_prints_its_start_each_tenth_and_its_end():
    out = io.StringIO()
    with Progress(150, "train ae", file=out, unit="step") as bar:
        for step in range(150):
            bar.set_postfix({"loss": f"{1 / (step + 1):.3g}"})
            bar.update(1)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 11  # start, 10 % ... 90 %, done
    assert lines[0] == "train ae: start, 150 step"
    assert "train ae: 15/150 step (10%)" in lines[1] and "step/s, ETA " in lines[1] and "loss=0.0667" in lines[1]
    assert "train ae: 135/150 step (90%)" in lines[-2]
    assert "train ae: done, 150/150 step (100%)" in lines[-1] and "ETA" not in lines[-1]


def test_a_resumed_loop_says_so_and_a_loop_stopped_early_says_where(monkeypatch):
    out = io.StringIO()
    with Progress(300, "OT solve", initial=40, file=out) as bar:
        bar.update(5)  # converged long before max_iter
    lines = out.getvalue().splitlines()
    assert lines[0] == "OT solve: start, 300 it (40 done before)"
    assert len(lines) == 2 and "OT solve: done, 45/300 it (15%)" in lines[1]
    # Between tenths, a slow loop still prints at least every MIN_INTERVAL seconds.
    monkeypatch.setattr(progress, "MIN_INTERVAL", 0.0)
    out = io.StringIO()
    with Progress(1000, "slow", file=out) as bar:
        for _ in range(3):
            bar.update(1)
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "slow: start",
        "slow: 1/1000 it (0%)",
        "slow: 2/1000 it (0%)",
        "slow: 3/1000 it (0%)",
        "slow: done",
    ]


def test_on_a_terminal_the_bar_is_drawn_as_before():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert tty.isatty()
            for _ in track(range(20), "latents", file=tty, unit="chunk"):
                pass
            tty.flush()
        chunks = []
        while select.select([master], [], [], 0.5)[0]:
            chunks.append(os.read(master, 65536))
        text = b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "\r" in text and "latents: 100%" in text and "20/20" in text  # tqdm's bar
    assert "start," not in text and "ETA" not in text  # no plain lines


def test_listeners_hear_every_loop_even_undisplayed_and_a_broken_one_is_dropped(capsys):
    events = []

    def broken(event):
        raise RuntimeError("UI is down")

    with listen(events.append), listen(broken):
        for _ in track(range(40), "generate", enabled=False):
            pass
    assert [e.phase for e in events] == ["start", *["update"] * 9, "end"]
    assert [e.n for e in events] == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert events[-1].percent == 100 and events[5].rate > 0 and events[5].eta >= 0
    err = capsys.readouterr().err
    assert err.count("dropped: RuntimeError: UI is down") == 1  # once, then the loop went on
    assert "generate:" not in err  # enabled=False: nothing displayed
    events.clear()
    for _ in track(range(3), "after", enabled=False):
        pass
    assert events == []  # the listener is gone with its block


@pytest.mark.parametrize("total", [0, 1, 7])
def test_small_and_empty_loops_print_start_and_end(total):
    out = io.StringIO()
    for _ in track(range(total), "centroids", file=out):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == f"centroids: start, {total} it" and f"done, {total}/{total} it" in lines[-1]
    assert len(lines) == 2 + max(total - 1, 0)  # each unit is a tenth or more of these totals
