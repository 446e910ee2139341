"""What an image metric compares: which reference (``against``) and which pixels (``region``).

Image metrics (dino, clip_i, l1, l2, lpips) take an ``against`` binding naming a ``Sample.references`` key whose
value is an :class:`ImageRef` or a tuple of them (each compared in turn; the metric averages the per-reference
scores), and a ``region`` binding (task YAML) with one of :data:`REGIONS`:

- ``full`` — the output and the reference as they are.
- ``mask_crop`` — entity-level scores of MIGEBench (PROTOCOLS.md §2): the output is blackened outside the benchmark's
  ground-truth mask (``references["mask"]``, white = region) and cropped to the mask's bounding box; the reference
  entity image (already on a black background) is used as is. This is the deterministic default extractor.
- ``detected_entity`` — MIGE's own extractor (``dino`` / ``clip_i`` only): the entity is found in the output with
  GroundingDINO + SAM (extra models; see ``metrics/entity_extractor.py``), blackened outside SAM's mask and cropped
  to the detected box; the whole output, counted in ``counters["entity_not_detected"]``, when nothing is detected.
- ``outside_mask`` — background preservation: the output, resized to the reference's size (bicubic), and the
  reference (the source image) compared only outside the mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.metrics.base import Excluded
from mige_bench.metrics.functional import resize_to_reference

if TYPE_CHECKING:
    from mige_bench.metrics.entity_extractor import DetectedEntity
    from mige_bench.sample import Sample

logger = logging.getLogger(__name__)

Region = Literal["full", "mask_crop", "outside_mask", "detected_entity"]
REGIONS: tuple[str, ...] = get_args(Region)

MASK_KEY = "mask"
"""The references key holding the ground-truth edit mask (white = edited region)."""

MASK_THRESHOLD = 128
"""Grey level from which a mask pixel counts as inside the region (masks are saved as 0/255, JPEG may blur edges)."""


class EmptyRegionError(ValueError):
    """The mask leaves nothing to compare (no entity pixel, or no background pixel); the metric excludes the row."""


@dataclass(frozen=True)
class RegionPair:
    """One output/reference pair after region handling.

    Attributes:
        output: The output image to compare (for ``outside_mask`` already at the reference's size).
        reference: The reference image to compare with.
        keep: Boolean ``[H, W]`` array at the reference's size selecting the compared pixels, or ``None`` for all.
    """

    output: Image.Image
    reference: Image.Image
    keep: np.ndarray | None = None

    def blackened(self) -> tuple[Image.Image, Image.Image]:
        """Both images with every pixel outside ``keep`` set to black (what an image encoder sees)."""
        if self.keep is None:
            return self.output, self.reference
        return blacken_outside(self.output, self.keep), blacken_outside(self.reference, self.keep)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes a boolean mask to ``size`` (width, height) with nearest-neighbour sampling, so it stays binary."""
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return np.asarray(image.resize(size, resample=Image.Resampling.NEAREST)) >= MASK_THRESHOLD


def blacken_outside(image: Image.Image, keep: np.ndarray) -> Image.Image:
    """Sets every pixel of ``image`` where ``keep`` is False to black."""
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[~keep] = 0
    return Image.fromarray(pixels, mode="RGB")


def crop_to_mask(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """Blackens ``image`` outside the mask and crops it to the mask's bounding box (MIGE's entity extraction).

    The mask is first resized to the image's size (nearest), since outputs need not have the dataset's resolution.

    Raises:
        EmptyRegionError: the mask has no white pixel.
    """
    mask = resize_mask(mask, image.size)
    rows, columns = np.nonzero(mask)
    if rows.size == 0:
        raise EmptyRegionError("empty ground-truth mask")
    box = (int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1)
    return blacken_outside(image, mask).crop(box)


def region_pair(output: Image.Image, reference: Image.Image, region: Region, mask: np.ndarray | None) -> RegionPair:
    """Applies a region rule to one output/reference pair.

    Args:
        output: The generated image.
        reference: The reference image (entity image for ``mask_crop``, source image for ``outside_mask``).
        region: One of :data:`REGIONS`.
        mask: Boolean ground-truth mask (True = edited region); required unless ``region == "full"``.

    Raises:
        EmptyRegionError: the mask leaves nothing to compare.
    """
    if region == "full":
        return RegionPair(output, reference)
    if mask is None:
        raise ValueError(f"region {region!r} needs a mask")
    if region == "mask_crop":
        return RegionPair(crop_to_mask(output, mask), reference)
    keep = ~resize_mask(mask, reference.size)
    if not keep.any():
        raise EmptyRegionError("mask covers the whole image")
    return RegionPair(resize_to_reference(output, reference), reference, keep)


# --------------------------------------------------------------------------------------------------------------------
# Reading references from samples
# --------------------------------------------------------------------------------------------------------------------


def reference_value(sample: Sample, key: str, metric: str) -> Any:
    """``sample.references[key]``, or a clear error naming the sample, the metric and the key."""
    try:
        return sample.references[key]
    except KeyError:
        known = ", ".join(sorted(sample.references)) or "none"
        raise MigeBenchError(
            f"sample {sample.id}: metric {metric!r} needs references key {key!r}, which the sample lacks "
            f"(it has: {known}); fix the metric binding in the task YAML or the task's loader."
        ) from None


def reference_text(sample: Sample, key: str, metric: str) -> str:
    """A caption from ``sample.references``; it must be a string."""
    value = reference_value(sample, key, metric)
    if not isinstance(value, str):
        raise MigeBenchError(
            f"sample {sample.id}: metric {metric!r} reads references key {key!r} as a caption, but it holds a "
            f"{type(value).__name__}; bind a text key."
        )
    return value


def reference_images(sample: Sample, key: str, metric: str) -> tuple[ImageRef, ...]:
    """The image(s) under ``sample.references[key]``: one :class:`ImageRef` or a non-empty tuple of them."""
    value = reference_value(sample, key, metric)
    images = value if isinstance(value, tuple) else (value,)
    if not images or not all(isinstance(image, ImageRef) for image in images):
        raise MigeBenchError(
            f"sample {sample.id}: metric {metric!r} reads references key {key!r} as image(s), but it holds "
            f"{type(value).__name__}; bind an image key."
        )
    return images


@dataclass
class ImageOpener:
    """Opens each :class:`ImageRef` once per scoring call, so a reference shared by many outputs (DreamBench's one
    image per subject) is decoded — and encoded — once: repeated references come back as the same object."""

    _opened: dict[ImageRef, Image.Image] = field(default_factory=dict)

    def __call__(self, image: ImageRef) -> Image.Image:
        if image not in self._opened:
            self._opened[image] = image.open()
        return self._opened[image]


@dataclass(frozen=True)
class ImagePairing:
    """The ``against`` + ``region`` binding of one image metric.

    Attributes:
        metric: The metric's id, for error messages.
        against: References key of the image(s) the output is compared with.
        region: One of :data:`REGIONS`.
        entity: The detector-based extractor, required by (and only used for) ``region: detected_entity``.
    """

    metric: str
    against: str
    region: Region = "full"
    entity: DetectedEntity | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise MigeBenchError(
                f"metric {self.metric!r}: region {self.region!r} is not one of {', '.join(REGIONS)}; fix the task YAML."
            )
        if self.region == "detected_entity" and self.entity is None:
            raise MigeBenchError(
                f"metric {self.metric!r}: region 'detected_entity' is available for dino and clip_i only; fix the "
                "task YAML."
            )

    def pairs(self, output: Image.Image, sample: Sample, opener: ImageOpener) -> list[RegionPair] | Excluded:
        """One :class:`RegionPair` per reference image of ``sample``, or the reason the sample is excluded."""
        references = [opener(image) for image in reference_images(sample, self.against, self.metric)]
        if self.region == "detected_entity":
            assert self.entity is not None  # checked in __post_init__
            entity = self.entity.extract(output, sample, self.metric)
            return [RegionPair(entity, reference) for reference in references]
        mask = None
        if self.region != "full":
            mask = ground_truth_mask(sample, self.metric, opener)
        try:
            return [region_pair(output, reference, self.region, mask) for reference in references]
        except EmptyRegionError as error:
            return Excluded(str(error))


def ground_truth_mask(sample: Sample, metric: str, opener: ImageOpener) -> np.ndarray:
    """The boolean ground-truth mask of ``sample`` (``references["mask"]``, white = region)."""
    mask_ref = reference_images(sample, MASK_KEY, metric)[0]
    return np.asarray(opener(mask_ref).convert("L")) >= MASK_THRESHOLD


def mean_over_references(per_pair: Sequence[float]) -> float:
    """The score of an output compared with several references: the mean of the per-reference scores
    (DreamBooth's protocol, ``dreambench@dreambooth``)."""
    return float(np.mean(per_pair))
