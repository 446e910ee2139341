"""MIGE's detector-based entity extractor for MIGEBench entity-level scores (``region: detected_entity``).

MIGE (PROTOCOLS.md §2) finds the edited entity in an output with GroundingDINO (SwinB; box threshold 0.3, text
threshold 0.25; the query is the record's ``object``), keeps the highest-scoring box, segments it with SAM ViT-H
prompted by that box, blackens every pixel outside the SAM mask and crops to the box. The result is compared with the
reference entity (already on black). When nothing is detected MIGE silently scores the whole output: so does this
extractor, for comparable numbers, but it counts each such output in the metric's
``counters["entity_not_detected"]``, so results report the detection-failure rate.

Binding (task YAML, on ``dino`` / ``clip_i``): ``region: detected_entity``, optional ``detector`` (default
:data:`DEFAULT_DETECTOR`) and ``segmenter`` (default :data:`DEFAULT_SEGMENTER`): a Hugging Face id, looked up offline
like the backbones (``$MIGE_BENCH_HOME/<id>``, then the Hugging Face cache), or a ``save_pretrained`` folder holding
the model and its processor. The models load lazily, once per process, on the metrics' device; their provenance
(paths, weight hashes, thresholds, library versions) is kept on :class:`EntityExtractor` and logged, because
``Backbones.provenance()`` only records the backbones of its fixed spec.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.metrics.backbones import SMOKE, MissingWeights, combined_sha256, resolve, weight_files
from mige_bench.metrics.regions import blacken_outside

if TYPE_CHECKING:
    from mige_bench.metrics.backbones import Backbones
    from mige_bench.sample import Sample

logger = logging.getLogger(__name__)

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-base"
"""GroundingDINO with a Swin-B backbone, the variant MIGE used."""

DEFAULT_SEGMENTER = "facebook/sam-vit-huge"
"""SAM ViT-H, the variant MIGE used."""

BOX_THRESHOLD = 0.3
"""A box is kept when its best token probability exceeds this (GroundingDINO's ``box_threshold``, MIGE's value)."""

TEXT_THRESHOLD = 0.25
"""Tokens above this probability form a box's phrase (GroundingDINO's ``text_threshold``, MIGE's value). As in
GroundingDINO's inference code it only names the box; being below :data:`BOX_THRESHOLD`, it never removes one."""

QUERY_KEY = "object"
"""The sample metadata key holding the detector query (MIGEBench records' ``object``)."""

NOT_DETECTED = "entity_not_detected"
"""Counter of outputs in which nothing was detected (scored as the whole image, as MIGE does)."""

MEMO_SIZE = 128
"""Extractions remembered per extractor: the entity-level DINO and CLIP-I columns score the same outputs one after
the other (a chunk at a time), so the second column reuses the first one's detections instead of running both models
again."""

# The form of a Hugging Face id that backbones.resolve looks up offline; anything else must be an existing folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# --------------------------------------------------------------------------------------------------------------------
# Geometry (pure functions)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """The box chosen in one output.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in pixels of the output, as the detector gives it (floats, possibly outside it).
        score: The box's best token probability.
        phrase: The query tokens above :data:`TEXT_THRESHOLD` for this box.
    """

    box: tuple[float, float, float, float]
    score: float
    phrase: str


def query_text(name: str) -> str:
    """GroundingDINO's caption for a query: lower case, stripped, ending with a full stop (its own preprocessing)."""
    caption = name.lower().strip()
    return caption if caption.endswith(".") else caption + "."


def best_detection(
    scores: Sequence[float], boxes: Sequence[Sequence[float]], phrases: Sequence[str]
) -> Detection | None:
    """The highest-scoring of the boxes kept by the box threshold (the first one on ties), or ``None`` if none is."""
    if not scores:
        return None
    best = int(np.argmax(scores))
    x0, y0, x1, y1 = (float(value) for value in boxes[best])
    return Detection((x0, y0, x1, y1), float(scores[best]), phrases[best])


def pixel_box(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """A detector box as integer pixel edges inside an image of ``size`` (width, height), or ``None`` if it holds no
    pixel. Coordinates are rounded as PIL's ``Image.crop`` rounds a float box, then clipped to the image (a box the
    detector draws past the border would otherwise be padded with black)."""
    width, height = size
    x0, y0, x1, y1 = (round(value) for value in box)
    x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def cut_out(image: Image.Image, mask: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    """``image`` blackened outside ``mask`` (boolean, image-sized) and cropped to ``box`` (MIGE's entity image)."""
    return blacken_outside(image, mask).crop(box)


# --------------------------------------------------------------------------------------------------------------------
# The two models
# --------------------------------------------------------------------------------------------------------------------


class EntityExtractor:
    """GroundingDINO + SAM on one device, with the record of which weights they are.

    Args:
        detector: A ``GroundingDinoForObjectDetection`` in eval mode on ``device``.
        detector_processor: Its ``GroundingDinoProcessor``.
        segmenter: A ``SamModel`` in eval mode on ``device``.
        segmenter_processor: Its ``SamProcessor``.
        device: Torch device of both models.
        provenance: What the models are (see :func:`load_extractor`).
    """

    def __init__(
        self,
        detector: Any,
        detector_processor: Any,
        segmenter: Any,
        segmenter_processor: Any,
        device: str,
        provenance: dict[str, Any],
    ) -> None:
        self.detector = detector
        self.detector_processor = detector_processor
        self.segmenter = segmenter
        self.segmenter_processor = segmenter_processor
        self.device = device
        self.provenance = provenance
        self._memo: OrderedDict[tuple[str, str], Image.Image | None] = OrderedDict()

    def detect(self, image: Image.Image, query: str) -> Detection | None:
        """The highest-scoring box for ``query`` above :data:`BOX_THRESHOLD`, or ``None``."""
        inputs = self.detector_processor(images=image, text=query_text(query), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.detector(**inputs)
        [result] = self.detector_processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=BOX_THRESHOLD,
            text_threshold=TEXT_THRESHOLD,
            target_sizes=[(image.height, image.width)],
        )
        return best_detection(result["scores"].tolist(), result["boxes"].tolist(), result["text_labels"])

    def segment(self, image: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
        """SAM's single mask (``multimask_output=False``) for a box prompt: boolean ``[H, W]`` at the image's size."""
        inputs = self.segmenter_processor(images=image, input_boxes=[[list(box)]], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.segmenter(
                pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False
            )
        [masks] = self.segmenter_processor.image_processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )
        return masks[0, 0].numpy()  # [H, W]: first box, only mask

    def extract(self, image: Image.Image, query: str) -> Image.Image | None:
        """The entity image: ``image`` blackened outside SAM's mask and cropped to the detected box; ``None`` when
        nothing is detected (or the box holds no pixel)."""
        image = image.convert("RGB")
        key = (hashlib.sha256(image.tobytes()).hexdigest() + f"@{image.width}x{image.height}", query)
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        detection = self.detect(image, query)
        box = pixel_box(detection.box, image.size) if detection is not None else None
        entity = None
        if detection is not None and box is not None:
            logger.debug("%r found as %r (score %.3f) at %s", query, detection.phrase, detection.score, box)
            entity = cut_out(image, self.segment(image, detection.box), box)
        self._memo[key] = entity
        if len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)
        return entity


# --------------------------------------------------------------------------------------------------------------------
# Loading: resolved like the backbones, once per process
# --------------------------------------------------------------------------------------------------------------------

_LOADED: dict[tuple[str, str, str], EntityExtractor] = {}
"""Process-wide extractors keyed by the resolved detector and segmenter folders and the device."""


def resolve_weights(role: str, spec: str, backbones: Backbones) -> Path:
    """The local folder of the ``detector`` or ``segmenter`` weights named by ``spec``, without loading them.

    Raises:
        MigeBenchError: the weights are not on this machine (naming the command that fetches them), or ``spec`` is
            neither a folder nor a Hugging Face id.
    """
    if spec == SMOKE or not (Path(spec).expanduser().is_dir() or _HUB_ID.fullmatch(spec)):
        default = DEFAULT_DETECTOR if role == "detector" else DEFAULT_SEGMENTER
        raise MigeBenchError(
            f"{role} {spec!r} is neither an existing folder nor a Hugging Face id like {default!r}; fix the "
            "binding in the task YAML."
        )
    try:
        source = resolve(role, spec, backbones.home, backbones.allow_download)
    except MissingWeights as error:
        raise MigeBenchError(
            f"{role} weights {spec!r} (region: detected_entity) not found on this machine; mige-bench never "
            f"downloads at run time, so fetch them with:\n  {error.command}\nor bind {role}: <folder> to a "
            "save_pretrained copy of the model and its processor."
        ) from None
    assert source.path is not None
    return source.path


def _load_detector(path: Path) -> tuple[Any, Any]:
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoProcessor

    config = GroundingDinoConfig.from_pretrained(path)
    if config.model_type != "grounding-dino":
        raise MigeBenchError(f"detector {path} holds a {config.model_type!r} model, not GroundingDINO.")
    # Checked by hand: transformers 5 silently builds a placeholder tokenizer when the files are missing.
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()):
        raise MigeBenchError(
            f"detector {path} has no tokenizer files (tokenizer.json or vocab.txt); save the processor there too."
        )
    return GroundingDinoForObjectDetection.from_pretrained(path), GroundingDinoProcessor.from_pretrained(path)


def _load_segmenter(path: Path) -> tuple[Any, Any]:
    from transformers import SamConfig, SamModel, SamProcessor

    config = SamConfig.from_pretrained(path)
    if config.model_type != "sam":
        raise MigeBenchError(f"segmenter {path} holds a {config.model_type!r} model, not SAM.")
    return SamModel.from_pretrained(path), SamProcessor.from_pretrained(path)


def _weights_record(spec: str, path: Path) -> dict[str, Any]:
    hashes = {}
    for file in weight_files(path):
        with file.open("rb") as handle:
            hashes[file.name] = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"spec": spec, "resolved_path": str(path), "weight_sha256": combined_sha256(hashes), "weight_files": hashes}


def load_extractor(detector: str, segmenter: str, backbones: Backbones) -> EntityExtractor:
    """The extractor for these weights on ``backbones.device``, loaded on first use and shared by every metric.

    Raises:
        MigeBenchError: weights missing, of the wrong kind, or unreadable.
    """
    detector_path = resolve_weights("detector", detector, backbones)
    segmenter_path = resolve_weights("segmenter", segmenter, backbones)
    key = (str(detector_path.resolve()), str(segmenter_path.resolve()), backbones.device)
    if key not in _LOADED:
        logger.info("loading entity detector %s and segmenter %s", detector_path, segmenter_path)
        try:
            detector_model, detector_processor = _load_detector(detector_path)
            segmenter_model, segmenter_processor = _load_segmenter(segmenter_path)
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            raise MigeBenchError(
                f"entity detector {detector!r} / segmenter {segmenter!r} could not be loaded ({error}); "
                "re-download or re-save them."
            ) from error
        provenance = {
            "detector": _weights_record(detector, detector_path),
            "segmenter": _weights_record(segmenter, segmenter_path),
            "box_threshold": BOX_THRESHOLD,
            "text_threshold": TEXT_THRESHOLD,
            "libraries": {package: metadata.version(package) for package in ("torch", "transformers", "pillow")},
        }
        logger.info("entity extractor provenance: %s", provenance)
        _LOADED[key] = EntityExtractor(
            detector_model.to(backbones.device).eval(),
            detector_processor,
            segmenter_model.to(backbones.device).eval(),
            segmenter_processor,
            backbones.device,
            provenance,
        )
    return _LOADED[key]


# --------------------------------------------------------------------------------------------------------------------
# The region binding of one metric
# --------------------------------------------------------------------------------------------------------------------


class DetectedEntity:
    """``region: detected_entity`` of one metric: turns each output into its detected entity image.

    The weights are checked when the binding is made (so a missing download fails before any image is scored) and
    loaded on the first output.

    Args:
        backbones: The run's backbones (for the device, the weights root and ``allow_download``).
        counters: The metric's counters; outputs without a detection add 1 to :data:`NOT_DETECTED`.
        detector: GroundingDINO hub id or folder.
        segmenter: SAM hub id or folder.
    """

    def __init__(
        self,
        backbones: Backbones,
        counters: Counter[str],
        detector: str = DEFAULT_DETECTOR,
        segmenter: str = DEFAULT_SEGMENTER,
    ) -> None:
        resolve_weights("detector", detector, backbones)
        resolve_weights("segmenter", segmenter, backbones)
        self.backbones = backbones
        self.counters = counters
        self.detector = detector
        self.segmenter = segmenter
        self._extractor: EntityExtractor | None = None

    def provenance(self) -> dict[str, Any]:
        """Ids, weight hashes and thresholds of the detector and segmenter (loads them if not loaded yet)."""
        if self._extractor is None:
            self._extractor = load_extractor(self.detector, self.segmenter, self.backbones)
        return dict(self._extractor.provenance)

    def extract(self, output: Image.Image, sample: Sample, metric: str) -> Image.Image:
        """The entity found in ``output`` for the sample's query, or the whole output (counted) when none is."""
        query = sample.metadata.get(QUERY_KEY)
        if not isinstance(query, str) or not query.strip():
            raise MigeBenchError(
                f"sample {sample.id}: metric {metric!r} with region 'detected_entity' needs the detector query in "
                f"metadata key {QUERY_KEY!r}, which the sample lacks; this region is for MIGEBench tasks."
            )
        if self._extractor is None:
            self._extractor = load_extractor(self.detector, self.segmenter, self.backbones)
        entity = self._extractor.extract(output, query)
        if entity is None:
            self.counters[NOT_DETECTED] += 1
            return output
        return entity


def detected_entity_binding(
    metric: str,
    region: str,
    backbones: Backbones,
    counters: Counter[str],
    detector: str | None,
    segmenter: str | None,
) -> DetectedEntity | None:
    """The :class:`DetectedEntity` of a metric bound to ``region: detected_entity``, else ``None``.

    Raises:
        MigeBenchError: ``detector`` or ``segmenter`` given with another region.
    """
    if region != "detected_entity":
        if detector is not None or segmenter is not None:
            raise MigeBenchError(
                f"metric {metric!r}: detector / segmenter apply only to region 'detected_entity', not {region!r}; "
                "fix the task YAML."
            )
        return None
    return DetectedEntity(backbones, counters, detector or DEFAULT_DETECTOR, segmenter or DEFAULT_SEGMENTER)
