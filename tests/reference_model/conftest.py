"""The ``golden`` fixture: the original MIGE code's tensors (helpers in ``tests/support/mige_golden.py``)."""

from __future__ import annotations

import pytest
from mige_golden import GoldenFixtures, load_golden


@pytest.fixture(scope="session")
def golden() -> GoldenFixtures:
    return load_golden()
