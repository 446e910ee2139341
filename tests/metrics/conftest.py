"""Fixtures shared by the metric tests."""

from __future__ import annotations

import pytest

from mige_bench.metrics.backbones import Backbones


@pytest.fixture(scope="session")
def smoke_backbones() -> Backbones:
    return Backbones.smoke()
