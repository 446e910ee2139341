"""Crash safety: a run killed with SIGKILL at any point resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mige_bench import run_folder as rf

SLOW_PLUGIN = """
import time

import numpy as np
from PIL import Image

from mige_bench.models.base import Generator


class SlowNoise(Generator):
    name = "slow_noise"

    def generate(self, samples, seeds):
        images = []
        for seed in seeds:
            time.sleep(0.02)
            images.append(Image.fromarray(np.random.default_rng(seed).integers(1, 255, (32, 32, 3), dtype=np.uint8)))
        return images
"""

IMAGES_PER_SAMPLE = 6  # 36 images on the demo task


def _command(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "mige_bench", "run", "--task", "demo", "--model", "crash_plugin:SlowNoise",
        "--images-per-sample", str(IMAGES_PER_SAMPLE), "--batch-size", "2", "--score-batch-size", "2",
        "--out", str(out), "--no-progress",
    ]  # fmt: skip


@pytest.fixture
def plugin_env(tmp_path) -> dict[str, str]:
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "crash_plugin.py").write_text(SLOW_PLUGIN)
    env = dict(os.environ)
    repo_root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), str(repo_root), env.get("PYTHONPATH", "")])
    return env


def _finish(out: Path, env: dict[str, str]) -> None:
    subprocess.run(_command(out), env=env, check=True, capture_output=True, timeout=300)


def _kill_when(out: Path, env: dict[str, str], ready) -> None:
    """Starts a run and SIGKILLs it as soon as ``ready(out)`` holds (polled), like a preempted GPU job."""
    process = subprocess.Popen(_command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while not ready(out):
            if process.poll() is not None:
                pytest.fail("the run finished before the kill point; make the plugin slower")
            if time.monotonic() > deadline:
                pytest.fail("kill point never reached")
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _image_count(at_least: int):
    return lambda out: len(list((out / "images").glob("*.png"))) >= at_least if (out / "images").is_dir() else False


def _score_lines(at_least: int):
    def ready(out: Path) -> bool:
        path = out / rf.SCORES
        return path.is_file() and path.read_bytes().count(b"\n") >= at_least

    return ready


def _comparable(out: Path) -> dict:
    results = json.loads((out / rf.RESULTS).read_text())
    results["provenance"].pop("timings")
    results["provenance"].pop("created_at")
    return results


@pytest.mark.slow
def test_sigkill_at_any_point_resumes_to_the_uninterrupted_result(tmp_path, plugin_env):
    reference, repeat = tmp_path / "uninterrupted", tmp_path / "repeat"
    _finish(reference, plugin_env)
    _finish(repeat, plugin_env)
    expected = _comparable(reference)
    expected_images = _images(reference)
    assert _comparable(repeat)["metrics"] == expected["metrics"]  # determinism: same command, same numbers
    assert _images(repeat) == expected_images  # ... and byte-identical images

    kill_points = {
        "early_generation": _image_count(3),
        "late_generation": _image_count(30),
        "mid_scoring": _score_lines(14),
    }
    for name, ready in kill_points.items():
        out = tmp_path / name
        _kill_when(out, plugin_env, ready)
        assert not (out / rf.RESULTS).exists(), f"{name}: killed before results, yet a results file exists"
        _finish(out, plugin_env)  # resume: the same command
        assert _comparable(out) == expected, name
        assert _images(out) == expected_images, f"{name}: images lost, duplicated or different"
        assert sorted(p.name for p in (out / "images").iterdir()) == sorted(expected_images), f"{name}: stray files"
        lines = rf.read_jsonl(out / rf.SCORES)
        keys = [(line["sample_id"], line["k"]) for line in lines]
        assert len(keys) == len(set(keys)) == 6 * IMAGES_PER_SAMPLE, f"{name}: score lines lost or duplicated"
        assert not (out / rf.LOCK).exists()


def _images(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "images").glob("*.png")}
