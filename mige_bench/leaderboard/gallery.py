"""Per-sample galleries: a few samples of each row, with the model's inputs, the references and the outputs.

A results file has only aggregates, so when a row is added (:func:`capture_gallery`) a small gallery is stored next
to it in ``<row>.gallery/``: thumbnails of the first ``sample_count`` scored samples (by id) — their inputs, the
reference images metrics compare with, the texts (instruction, captions) and the row's outputs — and a
``gallery.json`` index. Rendering merges the galleries of a table's rows (:func:`merge_galleries`): inputs and
references come from the first row holding the sample, outputs from every row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef, open_rgb, save_png_atomic
from mige_bench.leaderboard.collect import Row
from mige_bench.run_folder import MANIFEST, SCORES, read_json, read_jsonl, write_json_atomic

logger = logging.getLogger(__name__)

GALLERY_INDEX = "gallery.json"
THUMBNAIL_SIDE = 256
"""Longest side of stored gallery images: enough to judge an edit, small enough to commit."""


@dataclass(frozen=True)
class GallerySample:
    """One gallery line, ready to render (paths are relative to the leaderboard root).

    Attributes:
        sample_id: The sample.
        texts: ``(label, text)`` pairs: the instruction first, then reference captions.
        inputs: ``(label, image)`` pairs of what the model saw.
        references: ``(label, image)`` pairs of what the metrics compared with.
        outputs: Row name -> that row's output images of this sample.
    """

    sample_id: str
    texts: tuple[tuple[str, str], ...] = ()
    inputs: tuple[tuple[str, Path], ...] = ()
    references: tuple[tuple[str, Path], ...] = ()
    outputs: dict[str, tuple[Path, ...]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------------
# Capture (when a row is added)
# ----------------------------------------------------------------------------------------------------------------------


def _save_thumbnail(image: ImageRef | Path, destination: Path) -> None:
    picture = image.open() if isinstance(image, ImageRef) else open_rgb(image)
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    save_png_atomic(picture, destination)


def _load_samples_of_run(run_dir: Path) -> dict[str, Any]:
    """Sample id -> Sample, rebuilt from the run's manifest; empty (with a warning) when the data is unavailable."""
    from mige_bench.runner import load_samples, task_from_manifest

    manifest = read_json(run_dir / MANIFEST)
    data_root = Path(manifest["data_root"]) if manifest.get("data_root") else None
    try:
        samples = load_samples(task_from_manifest(manifest), data_root)
    except MigeBenchError as error:
        logger.warning("gallery of %s shows outputs only: the task's samples could not be loaded (%s)", run_dir, error)
        return {}
    return {sample.id: sample for sample in samples}


def _image_items(label: str, value: Any) -> list[tuple[str, ImageRef]]:
    if isinstance(value, ImageRef):
        return [(label, value)]
    if isinstance(value, (tuple, list)) and value and all(isinstance(item, ImageRef) for item in value):
        return [(f"{label} {index + 1}", item) for index, item in enumerate(value)]
    return []


def _sample_entry(sample: Any, folder: Path, prefix: str) -> dict[str, Any]:
    """Stores a sample's input and reference thumbnails under ``folder`` and returns their index entry."""
    inputs = [("source", sample.inputs.source_image)] if sample.inputs.source_image is not None else []
    inputs += _image_items("subject", tuple(sample.inputs.subject_images))
    references = [item for name, value in sample.references.items() for item in _image_items(name, value)]
    entry: dict[str, Any] = {
        "texts": [["instruction", sample.inputs.prompt]]
        + [[name, value] for name, value in sample.references.items() if isinstance(value, str)],
        "inputs": [],
        "references": [],
    }
    for kind, items in (("inputs", inputs), ("references", references)):
        for index, (label, image) in enumerate(items):
            relative = f"{prefix}/{kind}-{index}.png"
            _save_thumbnail(image, folder / relative)
            entry[kind].append([label, relative])
    return entry


def capture_gallery(run_dir: Path, destination: Path, sample_count: int) -> int:
    """Stores thumbnails and the index of the first ``sample_count`` scored samples of a run in ``destination``.

    Args:
        run_dir: A scored run folder.
        destination: The row's gallery folder (``<row>.gallery``); replaced if it exists.
        sample_count: How many samples to keep (0 stores no gallery).

    Returns:
        The number of samples stored.
    """
    lines = read_jsonl(run_dir / SCORES)
    outputs: dict[str, list[str]] = {}
    for line in sorted(lines, key=lambda line: (line["sample_id"], line["k"])):
        outputs.setdefault(line["sample_id"], []).append(line["image"])
    chosen = sorted(outputs)[:sample_count]
    if not chosen:
        return 0
    samples = _load_samples_of_run(run_dir)
    entries = []
    for sample_id in chosen:
        entry = _sample_entry(samples[sample_id], destination, sample_id) if sample_id in samples else {}
        entry["id"] = sample_id
        entry["outputs"] = []
        for k, image in enumerate(outputs[sample_id]):
            relative = f"{sample_id}/output-{k}.png"
            _save_thumbnail(run_dir / image, destination / relative)
            entry["outputs"].append(relative)
        entries.append(entry)
    write_json_atomic(destination / GALLERY_INDEX, {"samples": entries})
    return len(entries)


# ----------------------------------------------------------------------------------------------------------------------
# Merge (when rendering)
# ----------------------------------------------------------------------------------------------------------------------


def _pairs(raw: Sequence[Sequence[str]], base: Path | None = None) -> tuple[tuple[str, Any], ...]:
    return tuple((str(label), base / value if base else str(value)) for label, value in raw)


def merge_galleries(root: Path, rows: Sequence[Row]) -> list[GallerySample]:
    """The gallery of one table: the union of its rows' gallery samples, ordered by sample id.

    Args:
        root: The leaderboard root.
        rows: The table's rows, in table order (outputs are listed in that order).

    Returns:
        Gallery samples with paths relative to ``root``.
    """
    merged: dict[str, GallerySample] = {}
    for row in rows:
        if row.gallery is None:
            continue
        index: Mapping[str, Any] = read_json(root / row.gallery / GALLERY_INDEX)
        for entry in index["samples"]:
            sample_id = entry["id"]
            known = merged.get(sample_id)
            if known is None or not (known.inputs or known.references or known.texts):
                known = GallerySample(
                    sample_id=sample_id,
                    texts=_pairs(entry.get("texts", [])),
                    inputs=_pairs(entry.get("inputs", []), row.gallery),
                    references=_pairs(entry.get("references", []), row.gallery),
                    outputs=known.outputs if known else {},
                )
                merged[sample_id] = known
            known.outputs[row.name] = tuple(row.gallery / output for output in entry["outputs"])
    return [merged[sample_id] for sample_id in sorted(merged)]
