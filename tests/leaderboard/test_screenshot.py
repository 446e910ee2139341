"""The rendered site opens from disk in headless Chromium (skipped where Chromium is not installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mige_bench.leaderboard import write_leaderboards

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_leaderboard.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("screenshot_leaderboard", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_task_page_screenshot_is_a_png(board: Path, tmp_path: Path) -> None:
    script = _load_script()
    if script.find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the screenshot check needs it")
    write_leaderboards(board)
    output = script.screenshot(board / "site" / "toy@mige.html", tmp_path / "page.png", width=800, height=600)
    header = output.read_bytes()[:24]
    assert header.startswith(b"\x89PNG\r\n\x1a\n")
    assert int.from_bytes(header[16:20], "big") == 800
