"""``Sample``: one frozen benchmark item, with what the model may see kept apart from what only metrics may see."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef

SampleKind = Literal["subject", "edit", "subject_edit"]
"""The three task kinds of MIGE: subject-driven generation (edit a blank canvas), instruction editing, and
instruction-based subject-driven editing."""

SAMPLE_KINDS: tuple[SampleKind, ...] = get_args(SampleKind)

IMAGE_PLACEHOLDER = "<imagehere>"
"""Marker for an image inside a multimodal instruction (MIGE's convention)."""

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelInputs:
    """Everything a model is allowed to see for one sample. Targets can never leak in: they are not here.

    Attributes:
        prompt: The instruction or prompt as plain text (for text + image models), e.g. ``"a dog in the jungle"``.
        source_image: The image to edit; ``None`` for generation from a blank canvas.
        subject_images: Reference images of the subject(s) to preserve (subject-driven tasks).
        multimodal_prompt: The same instruction with one :data:`IMAGE_PLACEHOLDER` per image of
            ``placeholder_images`` (MIGE's format), or ``None`` when the benchmark defines none.
        placeholder_images: The images, in placeholder order, that ``multimodal_prompt`` refers to.
        edit_type: The benchmark's label of the edit when a model is meant to see it (Emu Edit's ``task``, which
            MIGE's instruction rewriting uses), else ``None``.
        subject_category: The class noun of the subject (``"dog"``) for subject-driven tasks; it is already in the
            plain prompt, and some models (BLIP-Diffusion) take it as a separate input.
    """

    prompt: str
    source_image: ImageRef | None = None
    subject_images: tuple[ImageRef, ...] = ()
    multimodal_prompt: str | None = None
    placeholder_images: tuple[ImageRef, ...] = ()
    edit_type: str | None = None
    subject_category: str | None = None


@dataclass(frozen=True)
class Sample:
    """One benchmark item.

    Attributes:
        id: Stable, filename-safe identifier; outputs are ``<id>.png`` or ``<id>_<k>.png``.
        kind: Which of the three task kinds this item is.
        inputs: What the model sees.
        references: What only metrics see: images (:class:`ImageRef` or tuples of them) and texts, by name, e.g.
            ``target_image``, ``reference_images``, ``output_caption``, ``mask``. Task YAML binds metrics
            to these names.
        metadata: Facts used for per-category breakdowns and traceability (``subject``, ``category``, ``turn``...).
        chain_from: Id of the sample whose *generated* image is this sample's source image (multi-turn editing,
            e.g. MagicBrush ``final_turn``). The runner generates that sample first and substitutes its output.
        scored: Whether this sample's outputs are scored (intermediate turns of a multi-turn session are not).
    """

    id: str
    kind: SampleKind
    inputs: ModelInputs
    references: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    chain_from: str | None = None
    scored: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _SAFE_ID.match(self.id):
            raise MigeBenchError(f"sample id {self.id!r} is not filename-safe (letters, digits, '.', '_', '-').")
        if not isinstance(self.inputs.prompt, str) or not self.inputs.prompt.strip():
            raise MigeBenchError(f"sample {self.id}: the prompt is empty; the dataset record has no instruction.")
        if self.inputs.multimodal_prompt is not None:
            markers = self.inputs.multimodal_prompt.lower().count(IMAGE_PLACEHOLDER)
            if markers != len(self.inputs.placeholder_images):
                raise MigeBenchError(
                    f"sample {self.id}: multimodal prompt has {markers} {IMAGE_PLACEHOLDER} markers but "
                    f"{len(self.inputs.placeholder_images)} placeholder images."
                )

    def output_name(self, k: int, images_per_sample: int) -> str:
        """File stem of this sample's ``k``-th output image (see :func:`output_stem`)."""
        return output_stem(self.id, k, images_per_sample)


def output_stem(sample_id: str, k: int, images_per_sample: int) -> str:
    """File stem of output ``k``: ``<id>`` when there is one image per sample, else ``<id>_<k>``."""
    return sample_id if images_per_sample == 1 else f"{sample_id}_{k}"


def sample_digests(samples: Sequence[Sample]) -> dict[str, str]:
    """Sample id -> SHA-256 of everything the sample holds: kind, inputs, references, metadata and chaining, with each
    image replaced by the SHA-256 of its encoded bytes.

    Two copies of a dataset that give a sample the same digest show its model the same inputs and its metrics the same
    references, wherever the files live and whatever they are called; a re-encoded or corrected image changes it.
    Each distinct image is read once, however many samples share it (DreamBench's subject references).

    Raises:
        MigeBenchError: an image file of the dataset is missing or unreadable, naming it.
    """
    image_hashes: dict[ImageRef, str] = {}

    def canonical(value: Any) -> Any:
        if isinstance(value, ImageRef):
            if value not in image_hashes:
                image_hashes[value] = value.content_hash()
            return {"image_sha256": image_hashes[value]}
        if isinstance(value, (tuple, list)):
            return [canonical(item) for item in value]
        if isinstance(value, Mapping):
            return {str(key): canonical(item) for key, item in value.items()}
        return value

    digests = {}
    for sample in samples:
        record = {
            "kind": sample.kind,
            "inputs": {f.name: canonical(getattr(sample.inputs, f.name)) for f in fields(sample.inputs)},
            "references": canonical(sample.references),
            "metadata": canonical(sample.metadata),
            "chain_from": sample.chain_from,
            "scored": sample.scored,
        }
        text = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        digests[sample.id] = hashlib.sha256(text.encode()).hexdigest()
    return digests
