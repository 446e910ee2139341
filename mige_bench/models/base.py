"""The model plug-in point: a ``Generator`` has one method, ``generate``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from mige_bench.sample import Sample


class Generator(ABC):
    """Turns samples into images.

    ``generate(samples, seeds)`` receives one entry per requested output image: ``samples[i]`` repeats when a task
    asks for several images per sample, and ``seeds[i]`` is that image's own seed (derived by the runner from the
    base seed, the sample id and the image index), so an image never depends on batch size, order or sharding.
    All outputs of one sample always arrive together in one call, image index ascending.
    Adapters build their model's input format from :class:`~mige_bench.sample.ModelInputs` alone and never branch on
    the task.

    Constructor keyword arguments come from ``--model-args key=value,...`` (strings); ``settings`` reports the
    resolved settings (presets, defaults) recorded in the run manifest.
    """

    name: ClassVar[str]

    @property
    def settings(self) -> dict[str, Any]:
        """Resolved settings recorded in the manifest (override to add defaults and presets)."""
        return {}

    @abstractmethod
    def generate(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Image.Image]:
        """Returns one RGB image per ``(samples[i], seeds[i])`` pair, in order."""
