"""Pixel and perceptual distances: L1, L2 and LPIPS at the reference's size (PROTOCOLS.md §1; lower is better).

Binding of every class here (task YAML): ``against: <references key>`` (an image, or a tuple of images → mean of the
per-reference distances) and ``region: full | mask_crop | outside_mask`` (default ``full``; ``outside_mask`` is
MIGEBench background preservation, see ``metrics/regions.py``).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

from PIL import Image

from mige_bench.metrics import functional
from mige_bench.metrics.base import Excluded, Metric, Score
from mige_bench.metrics.regions import ImageOpener, ImagePairing, Region, RegionPair, mean_over_references

if TYPE_CHECKING:
    from mige_bench.metrics.backbones import Backbones
    from mige_bench.sample import Sample

logger = logging.getLogger(__name__)


class _PairDistance(Metric):
    """A distance computed pair by pair and averaged over the references of each output."""

    higher_is_better: ClassVar[bool] = False
    backbones_used: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbones: Backbones, *, against: str, region: Region = "full") -> None:
        super().__init__()
        self.backbones = backbones
        self.pairing = ImagePairing(self.name, against, region)

    @abstractmethod
    def _distance(self, pair: RegionPair) -> float:
        """Distance of one output/reference pair."""

    def score(self, outputs: Sequence[Image.Image], samples: Sequence[Sample]) -> list[Score]:
        opener = ImageOpener()
        scores: list[Score] = []
        for output, sample in zip(outputs, samples, strict=True):
            pairs = self.pairing.pairs(output, sample, opener)
            if isinstance(pairs, Excluded):
                scores.append(pairs)
            else:
                scores.append(mean_over_references([self._distance(pair) for pair in pairs]))
        return scores


class _PixelDistance(_PairDistance):
    order: ClassVar[Literal[1, 2]]

    def _distance(self, pair: RegionPair) -> float:
        return functional.pixel_distance(pair.output, pair.reference, self.order, pair.keep)


class L1Distance(_PixelDistance):
    """L1: mean |a − b| over C×H×W, output resized to the reference's size (PIL bicubic), RGB in [0, 1]
    (MagicBrush, Emu Edit, MIGE). With ``region: outside_mask`` the mean runs over background pixels only."""

    name: ClassVar[str] = "l1"
    order: ClassVar[Literal[1, 2]] = 1


class L2Distance(_PixelDistance):
    """L2: mean (a − b)² over C×H×W, output resized to the reference's size (PIL bicubic), RGB in [0, 1]
    (MagicBrush's L2 is this mean squared error, not its square root)."""

    name: ClassVar[str] = "l2"
    order: ClassVar[Literal[1, 2]] = 2


class LpipsDistance(_PairDistance):
    """LPIPS: AlexNet LPIPS v0.1 (``lpips`` package), inputs in [-1, 1] at the reference's size.

    With ``region: outside_mask``, the edited region is blackened in both images and the LPIPS spatial map is
    averaged over background pixels only (see :class:`~mige_bench.metrics.encoders.LpipsNet`).
    """

    name: ClassVar[str] = "lpips"
    backbones_used: ClassVar[tuple[str, ...]] = ("lpips",)

    def _distance(self, pair: RegionPair) -> float:
        return self.backbones.lpips.distance(pair)
