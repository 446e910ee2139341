"""Shared access to the MIGE golden fixtures (tensors produced by the original MIGE code).

The folder comes from ``MIGE_GOLDEN_DIR`` (default ``../shared/fixtures/mige_golden`` next to the checkout). Tests that
need it skip with a reason when it is absent; nothing about the fixture set (dimensions, cases, scales, step counts) is
hard-coded here — it is all read from the folder's own ``config.json`` and case files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GOLDEN_DIR = REPO_ROOT.parent / "shared" / "fixtures" / "mige_golden"


def golden_dir() -> Path:
    return Path(os.environ.get("MIGE_GOLDEN_DIR", DEFAULT_GOLDEN_DIR))


@dataclass
class GoldenCase:
    """One ``case_*.json`` + ``case_*.safetensors`` pair."""

    name: str
    meta: dict
    tensors: dict[str, torch.Tensor]


@dataclass
class GoldenFixtures:
    root: Path
    config: dict

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_file(self.root / "mige_tiny_state_dict.safetensors")

    def case_names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("case_*.json"))

    def case(self, name: str) -> GoldenCase:
        meta = json.loads((self.root / f"{name}.json").read_text())
        return GoldenCase(name, meta, load_file(self.root / f"{name}.safetensors"))

    def json(self, name: str) -> dict:
        return json.loads((self.root / name).read_text())


def load_golden() -> GoldenFixtures:
    """The fixture folder, or a pytest skip saying where it was looked for."""
    root = golden_dir()
    if not (root / "config.json").is_file():
        pytest.skip(f"MIGE golden fixtures not found at {root} (set MIGE_GOLDEN_DIR or provide ../shared)")
    return GoldenFixtures(root, json.loads((root / "config.json").read_text()))


def assert_golden_close(actual: torch.Tensor, reference: torch.Tensor, name: str = "") -> None:
    """The fixture README's recommended bar: ``max|a - b| <= 2e-5 * max(1, max|ref|)`` (fp32, CPU)."""
    reference = reference.to(torch.float32)
    actual = actual.detach().to(torch.float32)
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    atol = 2e-5 * max(1.0, reference.abs().max().item())
    torch.testing.assert_close(actual, reference, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")
