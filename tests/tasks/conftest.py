"""Fixtures for the task tests: miniature datasets in temporary folders, real data only when present.

The miniatures themselves are built by :mod:`dataset_miniatures`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_miniatures import (
    SHARED_DATA,
    build_dreambench_root,
    build_emu_edit_root,
    build_magicbrush_official_root,
    build_magicbrush_parquet_root,
    build_migebench_root,
)


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaders must never find a user's real copy or Hugging Face cache during tests."""
    monkeypatch.setenv("MIGE_BENCH_HOME", str(tmp_path / "mige_home"))
    monkeypatch.setattr("mige_bench.loaders.local_copy._hub_cache_snapshot", lambda task: None)


@pytest.fixture
def dreambench_root(tmp_path: Path) -> Path:
    return build_dreambench_root(tmp_path)


@pytest.fixture
def emu_edit_root(tmp_path: Path) -> Path:
    return build_emu_edit_root(tmp_path)


@pytest.fixture
def magicbrush_official_root(tmp_path: Path) -> Path:
    return build_magicbrush_official_root(tmp_path)


@pytest.fixture
def magicbrush_parquet_root(tmp_path: Path) -> Path:
    return build_magicbrush_parquet_root(tmp_path)


@pytest.fixture
def migebench_root(tmp_path: Path) -> Path:
    return build_migebench_root(tmp_path)


@pytest.fixture
def shared_data() -> Path:
    """The team's read-only copy of real benchmark files; tests using it skip cleanly when it is absent (CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark files not available ({SHARED_DATA} is absent)")
    return SHARED_DATA
