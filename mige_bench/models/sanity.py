"""Sanity generators: the floor and ceiling rows of every leaderboard, and the CI smoke models.

``identity`` returns the source image unchanged (perfect preservation, no edit); ``copy_reference`` returns the first
subject image (perfect subject fidelity, ignores the prompt). A real model should beat each on the metric it games.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.models.base import Generator
from mige_bench.sample import Sample

BLANK_CANVAS_SIZE = 512
BLANK_CANVAS_GREY = 128


class IdentityGenerator(Generator):
    """Returns the source image; for generation tasks (no source) a uniform grey 512x512 canvas.

    MIGE treats subject-driven generation as editing a blank canvas, so "change nothing" on such a task is that
    canvas (grey rather than black, which the runner treats as a failed output).
    """

    name = "identity"

    @property
    def settings(self) -> dict[str, Any]:
        return {"blank_canvas": [BLANK_CANVAS_SIZE, BLANK_CANVAS_SIZE, BLANK_CANVAS_GREY]}

    def generate(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Image.Image]:
        return [
            sample.inputs.source_image.open()
            if sample.inputs.source_image is not None
            else Image.new("RGB", (BLANK_CANVAS_SIZE, BLANK_CANVAS_SIZE), (BLANK_CANVAS_GREY,) * 3)
            for sample in samples
        ]


class CopyReferenceGenerator(Generator):
    """Returns the first subject image of each sample (subject-driven tasks only)."""

    name = "copy_reference"
    task_kinds = ("subject", "subject_edit")

    def generate(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Image.Image]:
        images = []
        for sample in samples:
            if not sample.inputs.subject_images:
                raise MigeBenchError(
                    f"copy_reference needs subject images, and sample {sample.id} ({sample.kind}) has none; use "
                    "`identity` as the sanity baseline of editing tasks."
                )
            images.append(sample.inputs.subject_images[0].open())
        return images
