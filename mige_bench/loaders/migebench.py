"""MIGEBench (``EurekaTian/MIGEBench``): instruction-based subject-driven editing, ``add`` and ``replace`` subsets.

Layout of the hub repository (a local copy has the same shape)::

    add_bench.json  replace_bench.json
    add/add_entity/<idx>_entity_black.jpg, <idx>_entity_white.jpg
    add/add_mask/<idx>_mask.jpg   add/add_source/<idx>_source.jpg   add/add_target/<idx>_target.jpg
    replace/replace_entity/ ... (same pattern)

Each JSON record holds ``multi_prompt`` (the instruction with ``<imagehere>`` markers, in any letter case),
``entity_path`` (the images in marker order: add = [entity, source], replace = [source, entity]), ``source_path``,
``image`` (target), ``mask_path``, ``entity_path_white``, ``object`` (detector query), ``target_caption``,
``caption`` (the plain instruction), ``idx``, ``width``, ``height``. Its paths were written on the authors' machine
(``/path/to/MIGEBench/add/add_target/21_target.jpg``): each is resolved as its last three components
(``<subset>/<folder>/<file>``) under the copy's root.

Task ``data`` arguments: ``subset`` (``add`` | ``replace``), ``index_file`` (default ``<subset>_bench.json``),
``hub_id``, ``expected`` (the record count is unconfirmed, so no count is enforced by default).

Samples: ``id`` = ``<subset>-<idx>``; the model sees the source image, the entity as ``subject_images``, the
multimodal instruction with its images in marker order, and ``caption`` as the plain prompt. References:
``target_image``, ``source_image``, ``mask`` (the benchmark's ground-truth region of the edited entity),
``entity_image`` (the entity on black, MIGE's entity-level reference), ``entity_image_white``, ``target_caption``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.loaders.contents import DatasetContents, expected_counts
from mige_bench.loaders.local_copy import fetch_hub_snapshot, locate_copy, read_text_file
from mige_bench.paths import resolve_inside
from mige_bench.sample import IMAGE_PLACEHOLDER, ModelInputs, Sample
from mige_bench.task import Task

logger = logging.getLogger(__name__)

SUBSETS = ("add", "replace")
DATA_KEYS = frozenset({"subset", "index_file"})
_PLACEHOLDER_ANY_CASE = re.compile(re.escape(IMAGE_PLACEHOLDER), re.IGNORECASE)


def _subset(task: Task) -> str:
    subset = task.data.get("subset")
    if subset not in SUBSETS:
        raise MigeBenchError(f"{task.source_file}: data.subset must be one of {SUBSETS}, got {subset!r}.")
    return str(subset)


def _index_file(task: Task) -> str:
    return str(task.data.get("index_file", f"{_subset(task)}_bench.json"))


def resolve_record_path(root: Path, recorded: str) -> Path:
    """Maps a path written in the JSON to the local copy: ``<root>/<subset>/<folder>/<file>``."""
    parts = Path(recorded).parts
    if len(parts) < 3:
        raise MigeBenchError(f"MIGEBench path {recorded!r} has fewer than three components (<subset>/<folder>/<file>).")
    return resolve_inside(root, Path(*parts[-3:]), what="MIGEBench record")


def scan(task: Task, root: Path) -> DatasetContents:
    """Reads one subset of a local copy into samples (see the module docstring)."""
    subset = _subset(task)
    records = json.loads(read_text_file(root / _index_file(task)))
    samples: list[Sample] = []
    missing: set[Path] = set()
    for record in records:
        sample, record_missing = _sample(root, subset, record)
        samples.append(sample)
        missing.update(record_missing)
    return DatasetContents(
        location=root,
        samples=samples,
        counts={"records": len(samples)},
        expected=expected_counts(task),
        missing_files=tuple(sorted(missing)),
    )


def _sample(root: Path, subset: str, record: dict[str, Any]) -> tuple[Sample, list[Path]]:
    sample_id = f"{subset}-{record['idx']}"
    resolve = {
        "target": resolve_record_path(root, record["image"]),
        "source": resolve_record_path(root, record["source_path"][0]),
        "mask": resolve_record_path(root, record["mask_path"][0]),
        "entity_white": resolve_record_path(root, record["entity_path_white"][0]),
    }
    placed = [resolve_record_path(root, path) for path in record["entity_path"]]
    entities = [path for path in placed if path != resolve["source"]]
    if len(entities) != 1:
        raise MigeBenchError(f"MIGEBench {sample_id}: expected one entity image besides the source, got {entities}.")
    prompt = _PLACEHOLDER_ANY_CASE.sub(IMAGE_PLACEHOLDER, record["multi_prompt"])
    if prompt.count(IMAGE_PLACEHOLDER) != len(placed):
        raise MigeBenchError(
            f"MIGEBench {sample_id}: multi_prompt has {prompt.count(IMAGE_PLACEHOLDER)} image markers but "
            f"entity_path lists {len(placed)} images."
        )
    refs = {name: ImageRef(path=path) for name, path in resolve.items()}
    entity = ImageRef(path=entities[0])
    sample = Sample(
        id=sample_id,
        kind="subject_edit",
        inputs=ModelInputs(
            prompt=record["caption"],
            source_image=refs["source"],
            subject_images=(entity,),
            multimodal_prompt=prompt,
            placeholder_images=tuple(refs["source"] if path == resolve["source"] else entity for path in placed),
        ),
        references={
            "target_image": refs["target"],
            "source_image": refs["source"],
            "mask": refs["mask"],
            "entity_image": entity,
            "entity_image_white": refs["entity_white"],
            "target_caption": record["target_caption"],
        },
        metadata={
            "subset": subset,
            "idx": record["idx"],
            "object": record["object"],
            "width": record.get("width"),
            "height": record.get("height"),
        },
    )
    missing = [path for path in [*resolve.values(), *placed] if not path.is_file()]
    return sample, missing


def locate(task: Task, data_root: Path | None) -> Path:
    """The folder of the copy to read (``data_root``, the default data folder or the Hugging Face cache)."""
    index_file = _index_file(task)
    return locate_copy(task, data_root, lambda folder: (folder / index_file).is_file())


def load_migebench(task: Task, data_root: Path | None) -> list[Sample]:
    """Loads the task's subset from a complete local copy or the Hugging Face cache."""
    return scan(task, locate(task, data_root)).complete_samples(task)


def fetch(task: Task, destination: Path, progress: bool = True) -> Path:
    """Downloads the whole hub repository (both subsets) into ``destination``."""
    return fetch_hub_snapshot(task, destination, progress)
