"""Small images and samples built in code for the metric tests (no files from ../shared are needed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from mige_bench.images import ImageRef
from mige_bench.sample import ModelInputs, Sample


def noise_image(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    """A deterministic RGB noise image."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def solid_image(color: tuple[int, int, int], width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def ref(image: Image.Image, label: str = "test image") -> ImageRef:
    return ImageRef.from_pil(image, label=label)


def make_sample(sample_id: str, references: Mapping[str, Any]) -> Sample:
    return Sample(id=sample_id, kind="edit", inputs=ModelInputs(prompt="edit it"), references=dict(references))
