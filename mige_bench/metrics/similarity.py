"""Embedding similarities: DINO, CLIP-I, CLIP-T and CLIP directional similarity (PROTOCOLS.md §1).

Each class is a thin owner of a shared encoder (from :class:`~mige_bench.metrics.backbones.Backbones`) and its
protocol binding; features come from ``metrics/encoders.py`` and the math from ``metrics/functional.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.metrics import functional
from mige_bench.metrics.base import Excluded, Metric, Score
from mige_bench.metrics.embedding_cache import FeatureBatch, ImageRequest
from mige_bench.metrics.encoders import CROP_ROUNDINGS, CropRounding
from mige_bench.metrics.entity_extractor import detected_entity_binding
from mige_bench.metrics.regions import (
    ImageOpener,
    ImagePairing,
    Region,
    RegionPair,
    mean_over_references,
    reference_images,
    reference_text,
)

if TYPE_CHECKING:
    from mige_bench.metrics.backbones import Backbones
    from mige_bench.sample import Sample

logger = logging.getLogger(__name__)

OutputImage = Image.Image | ImageRef
"""An output as the metrics here take it: decoded, or a file the runner has not decoded (features may be ready)."""

IDENTICAL_CAPTIONS = "identical input and output captions"
"""Exclusion reason of CLIP-T (with ``exclude_if_equal``) and CLIP-dir rows whose two captions are the same."""


def _check_crop_rounding(metric: str, crop_rounding: str) -> None:
    if crop_rounding not in CROP_ROUNDINGS:
        raise MigeBenchError(
            f"metric {metric!r}: crop_rounding {crop_rounding!r} is not one of {', '.join(CROP_ROUNDINGS)}; "
            "fix the task YAML."
        )


class _ImageSimilarity(Metric):
    """Cosine between the output's and the reference's image embedding, averaged over references.

    ``backbones_used`` (on every metric class here) names the backbones the metric loads, so a runner can check
    them with ``Backbones.ensure_available`` before generating.

    Binding (task YAML): ``against: <references key>`` (an image, or a tuple of images → mean of per-reference
    cosines); ``region: full | mask_crop | outside_mask | detected_entity`` (see ``metrics/regions.py``; default
    ``full``); with ``detected_entity``, optional ``detector`` and ``segmenter`` (hub id or folder; see
    ``metrics/entity_extractor.py``); ``crop_rounding: hf | torchvision`` (PROTOCOLS.md trap 11; default ``hf``, as
    MIGE's code).
    """

    higher_is_better: ClassVar[bool] = True
    accepts_image_refs: ClassVar[bool] = True
    """``score`` also takes outputs as files (``ImageRef``) and ``image_requests`` announces what it will encode: the
    runner then decodes outputs in worker processes, and features shared between metrics are computed once."""

    def __init__(
        self,
        backbones: Backbones,
        *,
        against: str,
        region: Region = "full",
        crop_rounding: CropRounding = "hf",
        detector: str | None = None,
        segmenter: str | None = None,
    ) -> None:
        super().__init__()
        _check_crop_rounding(self.name, crop_rounding)
        self.backbones = backbones
        entity = detected_entity_binding(self.name, region, backbones, self.counters, detector, segmenter)
        self.pairing = ImagePairing(self.name, against, region, entity)
        self.crop_rounding = crop_rounding

    def provenance(self) -> dict[str, Any]:
        entity = self.pairing.entity
        return {"entity_extractor": entity.provenance()} if entity is not None else {}

    def image_requests(self, outputs: Sequence[OutputImage], samples: Sequence[Sample]) -> list[ImageRequest]:
        """The images :meth:`score` will encode, announced so the runner can prepare them ahead (outputs given as
        files, references used as they are; region-derived images are made while scoring)."""
        if self.pairing.region != "full":
            return []
        backbone = self.backbones_used[0]
        requests = []
        for output, sample in zip(outputs, samples, strict=True):
            if isinstance(output, ImageRef):
                requests.append(ImageRequest(output, backbone, self.crop_rounding))
            references = reference_images(sample, self.pairing.against, self.name)
            requests.extend(ImageRequest(image, backbone, self.crop_rounding, cacheable=True) for image in references)
        return requests

    def score(self, outputs: Sequence[OutputImage], samples: Sequence[Sample]) -> list[Score]:
        opener = ImageOpener()
        batch = self.backbones.features.batch(self.backbones_used[0], self.crop_rounding)
        rows: list[list[tuple[int, int]] | Excluded] = []
        for output, sample in zip(outputs, samples, strict=True):
            if self.pairing.region == "full":
                # Reference files are encoded as they are, so their features may come from the embedding cache.
                references = reference_images(sample, self.pairing.against, self.name)
                rows.append([(batch.add(output), batch.add(image, cacheable=True)) for image in references])
                continue
            pairs = self.pairing.pairs(opener(output) if isinstance(output, ImageRef) else output, sample, opener)
            rows.append(pairs if isinstance(pairs, Excluded) else [self._register(pair, batch) for pair in pairs])
        features = batch.encode()
        scores: list[Score] = []
        for row in rows:
            if isinstance(row, Excluded):
                scores.append(row)
                continue
            first, second = zip(*row, strict=True)
            cosines = functional.cosine_similarity(features[list(first)], features[list(second)])
            scores.append(mean_over_references(cosines))
        return scores

    @staticmethod
    def _register(pair: RegionPair, batch: FeatureBatch) -> tuple[int, int]:
        output, reference = pair.blackened()
        return batch.add(output), batch.add(reference)


class DinoSimilarity(_ImageSimilarity):
    """DINO score: cos(DINO(output), DINO(reference)), raw, in [-1, 1] (DreamBooth; MIGE; MagicBrush; Emu Edit).

    Feature: DINO ViT-S/16 CLS token after the final LayerNorm (eps 1e-6, as the original), input resized 256
    (bicubic) → centre crop 224 → ImageNet normalisation. Binding: see :class:`_ImageSimilarity` — ``against``,
    ``region``, ``crop_rounding``.
    """

    name: ClassVar[str] = "dino"
    backbones_used: ClassVar[tuple[str, ...]] = ("dino",)


class ClipImageSimilarity(_ImageSimilarity):
    """CLIP-I: cos(CLIP_img(output), CLIP_img(reference)), raw, in [-1, 1] (MIGE; MagicBrush; Emu Edit; Kosmos-G ×100).

    Feature: projected CLIP image embedding, L2-normalised; input resized 224 (bicubic) → centre crop 224 → CLIP
    normalisation. Binding: see :class:`_ImageSimilarity` — ``against``, ``region``, ``crop_rounding``.
    """

    name: ClassVar[str] = "clip_i"
    backbones_used: ClassVar[tuple[str, ...]] = ("clip",)


class ClipTextSimilarity(Metric):
    """CLIP-T: cos(CLIP_img(output), CLIP_txt(caption)), raw, in [-1, 1] (MIGE, Emu Edit "CLIP-out", MagicBrush).

    Captions are tokenised to CLIP's 77-token context; longer ones are truncated, and every output scored against a
    truncated caption is counted in ``counters["outputs_with_truncated_caption"]`` (per output image, so a caption
    shared by a sample's k images counts k times; exact whichever way the runner chunks the work).

    Binding (task YAML): ``caption: <references key>`` (the text compared with the output);
    ``exclude_if_equal: <references key>`` (optional: rows whose caption equals this one, e.g. Emu Edit's
    ``input_caption``, are excluded as ``"identical input and output captions"``); ``crop_rounding: hf | torchvision``.
    """

    name: ClassVar[str] = "clip_t"
    higher_is_better: ClassVar[bool] = True
    backbones_used: ClassVar[tuple[str, ...]] = ("clip",)
    accepts_image_refs: ClassVar[bool] = True

    def __init__(
        self,
        backbones: Backbones,
        *,
        caption: str,
        exclude_if_equal: str | None = None,
        crop_rounding: CropRounding = "hf",
    ) -> None:
        super().__init__()
        _check_crop_rounding(self.name, crop_rounding)
        self.backbones = backbones
        self.caption = caption
        self.exclude_if_equal = exclude_if_equal
        self.crop_rounding = crop_rounding

    def _kept(self, samples: Sequence[Sample]) -> list[tuple[int, str]]:
        """``(row, caption)`` of the samples that are scored (not excluded for identical captions)."""
        kept = []
        for index, sample in enumerate(samples):
            caption = reference_text(sample, self.caption, self.name)
            if self.exclude_if_equal is None or caption != reference_text(sample, self.exclude_if_equal, self.name):
                kept.append((index, caption))
        return kept

    def image_requests(self, outputs: Sequence[OutputImage], samples: Sequence[Sample]) -> list[ImageRequest]:
        """The output files :meth:`score` will encode, announced so the runner can prepare them ahead."""
        return [
            ImageRequest(outputs[index], "clip", self.crop_rounding)
            for index, _ in self._kept(samples)
            if isinstance(outputs[index], ImageRef)
        ]

    def score(self, outputs: Sequence[OutputImage], samples: Sequence[Sample]) -> list[Score]:
        scores: list[Score] = [Excluded(IDENTICAL_CAPTIONS)] * len(samples)
        kept = self._kept(samples)
        if not kept:
            return scores
        texts = self.backbones.clip.encode_texts([caption for _, caption in kept])
        self.counters["outputs_with_truncated_caption"] += sum(texts.truncated)
        batch = self.backbones.features.batch("clip", self.crop_rounding)
        rows = [batch.add(outputs[index]) for index, _ in kept]
        images = batch.encode()[rows]
        for (index, _), value in zip(kept, functional.cosine_similarity(images, texts.features.numpy()), strict=True):
            scores[index] = float(value)
        return scores


class ClipDirectionalSimilarity(Metric):
    """CLIP-dir (Emu Edit / InstructPix2Pix, computed as in MIGE's code):
    ``cos(n(E_img(out)) − n(E_img(src)), n(E_txt(caption)) − n(E_txt(source_caption)))``, raw, in [-1, 1].

    Rows whose two captions are identical are undefined and excluded as ``"identical input and output captions"``
    (Emu Edit test: 690 rows). Outputs for which either caption was truncated to CLIP's 77 tokens are counted in
    ``counters["outputs_with_truncated_caption"]``.

    Binding (task YAML): ``caption`` (output caption), ``source_caption`` (input caption), ``source_image`` —
    references keys; ``crop_rounding: hf | torchvision`` (default ``hf``).
    """

    name: ClassVar[str] = "clip_dir"
    higher_is_better: ClassVar[bool] = True
    backbones_used: ClassVar[tuple[str, ...]] = ("clip",)
    accepts_image_refs: ClassVar[bool] = True

    def __init__(
        self,
        backbones: Backbones,
        *,
        caption: str,
        source_caption: str,
        source_image: str,
        crop_rounding: CropRounding = "hf",
    ) -> None:
        super().__init__()
        _check_crop_rounding(self.name, crop_rounding)
        self.backbones = backbones
        self.caption = caption
        self.source_caption = source_caption
        self.source_image = source_image
        self.crop_rounding = crop_rounding

    def _kept(self, samples: Sequence[Sample]) -> list[tuple[int, str, str, ImageRef]]:
        """``(row, caption, source caption, source image)`` of the samples whose two captions differ."""
        kept = []
        for index, sample in enumerate(samples):
            caption = reference_text(sample, self.caption, self.name)
            source_caption = reference_text(sample, self.source_caption, self.name)
            if caption != source_caption:
                source = reference_images(sample, self.source_image, self.name)[0]
                kept.append((index, caption, source_caption, source))
        return kept

    def image_requests(self, outputs: Sequence[OutputImage], samples: Sequence[Sample]) -> list[ImageRequest]:
        """The output files and source images :meth:`score` will encode, announced so the runner can prepare them
        ahead."""
        requests = []
        for index, _, _, source in self._kept(samples):
            if isinstance(outputs[index], ImageRef):
                requests.append(ImageRequest(outputs[index], "clip", self.crop_rounding))
            requests.append(ImageRequest(source, "clip", self.crop_rounding, cacheable=True))
        return requests

    def score(self, outputs: Sequence[OutputImage], samples: Sequence[Sample]) -> list[Score]:
        scores: list[Score] = [Excluded(IDENTICAL_CAPTIONS)] * len(samples)
        batch = self.backbones.features.batch("clip", self.crop_rounding)
        kept = [
            (index, batch.add(outputs[index]), batch.add(source, cacheable=True), caption, source_caption)
            for index, caption, source_caption, source in self._kept(samples)
        ]
        if not kept:
            return scores
        indices, output_rows, source_rows, output_captions, source_captions = (
            list(column) for column in zip(*kept, strict=True)
        )
        clip = self.backbones.clip
        output_texts = clip.encode_texts(output_captions)
        source_texts = clip.encode_texts(source_captions)
        self.counters["outputs_with_truncated_caption"] += sum(
            output_truncated or source_truncated
            for output_truncated, source_truncated in zip(output_texts.truncated, source_texts.truncated, strict=True)
        )
        features = batch.encode()
        directions = functional.directional_similarity(
            features[output_rows], features[source_rows], output_texts.features.numpy(), source_texts.features.numpy()
        )
        for index, value in zip(indices, directions, strict=True):
            scores[index] = float(value)
        return scores
