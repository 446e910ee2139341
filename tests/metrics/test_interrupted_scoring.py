"""Ctrl-C while scoring: the decoding workers stay quiet and the run stops promptly, keeping its finished scores."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mige_bench import run_folder as rf
from mige_bench.images import ImageRef
from mige_bench.metrics.backbones import Backbones
from mige_bench.metrics.embedding_cache import ImageFeatures, ImageRequest

# A terminal's Ctrl-C finds Python's default SIGINT handler in the CLI; set it explicitly, because a test runner
# started with SIGINT ignored (as non-interactive shells start background jobs) would pass that on to the child.
CLI = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from mige_bench.cli import main; sys.exit(main(sys.argv[1:]))"
)
SCORING_TIMEOUT_S = 180  # until the first score line (imports and smoke backbones on a busy 2-core CI machine)
EXIT_TIMEOUT_S = 30  # from Ctrl-C to exit; about 1 s on an idle machine
STUCK_RESCUE_S = 30  # a worker stuck on purpose is freed after this long, so that a regression fails, not hangs


class _FifoImage(ImageRef):
    """An image whose decoding reads a named pipe first: it blocks for as long as the pipe's writer keeps it open."""

    def open(self) -> Image.Image:
        Path(self.path).read_bytes()
        raise OSError(f"{self.path}: not an image")


def _open_once_read(fifo: Path) -> int:
    """Opens ``fifo`` for writing as soon as a process opened it for reading; that reader then blocks until the
    returned descriptor is written to or closed."""
    deadline = time.monotonic() + STUCK_RESCUE_S
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:  # ENXIO: nobody reads it yet
            if error.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_ctrl_c_stops_a_worker_stuck_in_a_decode_without_waiting_for_it(
    smoke_backbones: Backbones, tmp_path: Path
) -> None:
    fifo = tmp_path / "decoding_never_ends"
    os.mkfifo(fifo)
    features = ImageFeatures(smoke_backbones, cache=None)
    before = set(multiprocessing.active_children())
    released = threading.Event()

    def release(writer: int) -> None:  # EOF frees the worker
        released.set()
        os.close(writer)

    with pytest.raises(KeyboardInterrupt), features.decoding_in_workers(1):
        features.prefetch([ImageRequest(_FifoImage(path=fifo), "clip", "hf")])
        workers = set(multiprocessing.active_children()) - before
        writer = _open_once_read(fifo)  # the worker is stuck reading the image from here on
        rescue = threading.Timer(STUCK_RESCUE_S, release, [writer])
        rescue.start()
        interrupted = time.monotonic()
        raise KeyboardInterrupt  # a Ctrl-C in the scoring process
    stopped_within = time.monotonic() - interrupted
    rescue.cancel()
    rescue.join()
    if not released.is_set():
        os.close(writer)
    assert workers
    assert not any(worker.is_alive() for worker in workers)
    assert stopped_within < 10, "the pool waited for a worker that could not finish"


def _wait_for_score_line(scores: Path, process: subprocess.Popen) -> int:
    """Waits until the run has appended a score line (decoding workers are running then); returns the line count."""
    deadline = time.monotonic() + SCORING_TIMEOUT_S
    while not (scores.is_file() and (lines := scores.read_bytes().count(b"\n"))):
        if process.poll() is not None:
            pytest.fail(f"the run exited ({process.returncode}) before scoring began")
        if time.monotonic() > deadline:
            pytest.fail("scoring did not begin in time")
        time.sleep(0.01)
    return lines


def _group_still_alive_after(group: int, seconds: float) -> bool:
    """Whether any process of ``group`` is still alive after waiting up to ``seconds`` for all of them to exit."""
    deadline = time.monotonic() + seconds
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _group_alive(group)


def _start_long_scoring_run(tmp_path: Path, out: Path, stderr: Any) -> subprocess.Popen:
    """The CLI on the demo task with 240 images in 30 scoring chunks (seconds of scoring left after the first chunk),
    in its own process group, as a shell runs a foreground job: a Ctrl-C reaches the CLI and its workers alike."""
    command = [
        sys.executable, "-c", CLI, "run", "--task", "demo", "--model", "identity", "--images-per-sample", "40",
        "--score-batch-size", "8", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    env = dict(os.environ, MIGE_BENCH_HOME=str(tmp_path / "home"))
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True, cwd=tmp_path
    )


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
def test_ctrl_c_while_scoring_exits_promptly_without_worker_tracebacks(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = _start_long_scoring_run(tmp_path, out, stderr)
        try:
            lines_before = _wait_for_score_line(out / rf.SCORES, process)
            os.killpg(process.pid, signal.SIGINT)
            try:
                returncode = process.wait(timeout=EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {EXIT_TIMEOUT_S} s after Ctrl-C:\n{stderr_path.read_text()}")
            orphans = _group_still_alive_after(process.pid, 5)
        finally:
            if _group_alive(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    errors = stderr_path.read_text()
    assert returncode == 130, errors
    assert "Traceback" not in errors, errors
    assert "interrupted: finished images and scores are kept" in errors
    assert not orphans, "decoding workers outlived the interrupted run"
    lines = rf.read_jsonl(out / rf.SCORES)
    assert lines_before <= len(lines) < 240
    assert not (out / rf.LOCK).exists()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_decoding_workers_die_with_a_killed_scoring_process(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = _start_long_scoring_run(tmp_path, out, subprocess.DEVNULL)
    try:
        _wait_for_score_line(out / rf.SCORES, process)
        process.kill()  # the scoring process alone, as an OOM killer or a cluster's preemption would
        process.wait()
        orphans = _group_still_alive_after(process.pid, 10)
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert not orphans, "decoding workers outlived their killed parent"
