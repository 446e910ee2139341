"""The model plug-in point: a ``Generator`` has one method, ``generate``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from mige_bench.sample import SAMPLE_KINDS, Sample, SampleKind


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
    task_kinds: tuple[SampleKind, ...] = SAMPLE_KINDS
    """The sample kinds this generator can run. The runner refuses a task of another kind once the model has loaded,
    before anything is generated or written (adapters whose kinds depend on the loaded model override it)."""

    @property
    def settings(self) -> dict[str, Any]:
        """Resolved settings recorded in the manifest (override to add defaults and presets)."""
        return {}

    @abstractmethod
    def generate(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Image.Image]:
        """Returns one RGB image per ``(samples[i], seeds[i])`` pair, in order."""
