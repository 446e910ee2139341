"""A small leaderboard root built in code: two rows with galleries, a reported table, hostile captions."""

from __future__ import annotations

from pathlib import Path

import pytest
from leaderboard_builders import HOSTILE_CAPTION, add_row_file, results_file
from PIL import Image

from mige_bench.run_folder import write_json_atomic

REPORTED_YAML = """\
task: toy@mige
title: Toy paper, Table 1
protocol: >-
  The paper's own protocol: 4 images per prompt, ViT-B/32.
citation: {paper: "Toy paper (arXiv 0000.00000)", table: "Table 1"}
confidence: secondary copy
columns: [l1, dino]
rows:
  - model: PaperModel
    scores: {l1: 0.09, dino: 0.81}
  - model: OtherModel
    scores: {l1: 0.12, dino: null}
    citation: {paper: "Other paper", table: "Table 3", via: "a review site"}
    confidence: secondary, provenance unclear
    note: "<script>alert('note')</script>"
"""


def _gallery(root: Path, row: str, colour: tuple[int, int, int]) -> None:
    folder = root / "results" / "toy@mige" / f"{row}.gallery"
    for relative in ("s01/inputs-0.png", "s01/references-0.png", "s01/output-0.png"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), colour).save(folder / relative)
    entry = {
        "id": "s01",
        "texts": [["instruction", "make it <b>bold</b>"], ["output_caption", HOSTILE_CAPTION]],
        "inputs": [["source", "s01/inputs-0.png"]],
        "references": [["target_image", "s01/references-0.png"]],
        "outputs": ["s01/output-0.png"],
    }
    write_json_atomic(folder / "gallery.json", {"samples": [entry]})


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """``<tmp>/leaderboards`` with rows ``identity`` (l1 0.2) and ``alpha`` (l1 0.1), both with galleries."""
    root = tmp_path / "leaderboards"
    add_row_file(
        root,
        "identity",
        results_file(
            "identity",
            {"l1": (0.2, 0.15, 0.25), "dino": (0.9, 0.85, 0.95)},
            breakdown={"a": (0.3, 0.2, 0.4, 2), "b": (0.1, 0.05, 0.15, 2)},
        ),
    )
    add_row_file(
        root,
        "alpha",
        results_file(
            "folder",
            {"l1": (0.1, 0.08, 0.12), "dino": (0.7, 0.6, 0.8)},
            breakdown={"a": (0.12, 0.1, 0.14, 2), "b": (0.08, 0.06, 0.1, 2)},
            created_at="2025-04-02T08:00:00+00:00",
        ),
    )
    _gallery(root, "identity", (10, 10, 10))
    _gallery(root, "alpha", (200, 30, 30))
    (root / "reported").mkdir()
    (root / "reported" / "toy_paper.yaml").write_text(REPORTED_YAML)
    return root
