"""Emu Edit test set (``facebook/emu_edit_test_set``): instruction editing with no target images.

Rows have ``instruction, image, task, split, idx, hash, input_caption, output_caption``; split ``test`` has 3,589
rows and ``validation`` 2,022. A local copy is the hub's parquet files (what ``data fetch`` downloads, or the
Hugging Face cache after ``datasets.load_dataset``) or a ``datasets`` ``save_to_disk`` folder.

Trap 8: the companion ``facebook/emu_edit_test_set_generations`` (Emu Edit's released outputs) swaps the split names
(its ``validation`` holds the 3,589 test rows). Loading refuses rows whose own ``split`` column disagrees with the
requested split, and a count mismatch that equals the other split's size is reported as that swap.

Task ``data`` arguments: ``hub_id``, ``hub_revision``, ``split`` (default ``test``), ``expected`` (counts per split:
``rows``, ``identical_captions``).

Samples: ``id`` = ``<split>-<idx:04d>``; the model sees the instruction verbatim (368 test instructions carry
leading or trailing whitespace, 3 and 365, as published) and the input image, with the ``task`` label as
``edit_type``. References: ``source_image`` (the input image: Emu Edit has no targets, so image metrics compare with
it), ``input_caption``, ``output_caption``. Metadata: ``task`` (8 labels: background, global, style, remove, add,
local, color, text), ``idx``, ``split``, ``hash``, ``identical_captions`` (rows where CLIP-T and CLIP-dir are
undefined by protocol).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from mige_bench.errors import MigeBenchError
from mige_bench.loaders.contents import DatasetContents, expected_counts
from mige_bench.loaders.local_copy import (
    fetch_hub_snapshot,
    image_from_cell,
    locate_copy,
    read_hf_split,
)
from mige_bench.sample import ModelInputs, Sample
from mige_bench.task import Task

logger = logging.getLogger(__name__)

DEFAULT_SPLIT = "test"
DATA_KEYS = frozenset({"split"})


def is_copy(root: Path) -> bool:
    """Whether ``root`` holds parquet files or a ``save_to_disk`` dataset."""
    return root.is_dir() and (
        (root / "dataset_dict.json").is_file() or (root / "state.json").is_file() or any(root.rglob("*.parquet"))
    )


def scan(task: Task, root: Path) -> DatasetContents:
    """Reads the requested split of a local copy into samples (see the module docstring)."""
    split = str(task.data.get("split", DEFAULT_SPLIT))
    rows = read_hf_split(root, split)
    _refuse_mislabelled_rows(rows, split, root)
    samples = [_sample(row, split) for row in rows]
    per_task = Counter(row["task"] for row in rows)
    counts = {
        "rows": len(samples),
        "identical_captions": sum(sample.metadata["identical_captions"] for sample in samples),
        **{f"task_{label}": count for label, count in sorted(per_task.items())},
    }
    expected = expected_counts(task, split)
    return DatasetContents(
        location=root,
        samples=samples,
        counts=counts,
        expected=expected,
        notes=_split_swap_hint(task, split, len(samples)),
    )


def _refuse_mislabelled_rows(rows: list[dict[str, Any]], split: str, root: Path) -> None:
    labels = Counter(row.get("split", split) for row in rows)
    wrong = {label: count for label, count in labels.items() if label != split}
    if wrong:
        raise MigeBenchError(
            f"{root}: the '{split}' split holds rows labelled {wrong} in their own 'split' column. This is the "
            f"symptom of facebook/emu_edit_test_set_generations, whose split names are swapped relative to "
            f"facebook/emu_edit_test_set; point --data-root at a copy of facebook/emu_edit_test_set."
        )


def _split_swap_hint(task: Task, split: str, rows: int) -> tuple[str, ...]:
    for other, counts in task.data.get("expected", {}).items():
        if other != split and counts.get("rows") == rows and expected_counts(task, split).get("rows") != rows:
            return (
                f"the '{split}' split has {rows} rows, the size of the '{other}' split: split names may be swapped "
                f"(as in facebook/emu_edit_test_set_generations)",
            )
    return ()


def _sample(row: dict[str, Any], split: str) -> Sample:
    sample_id = f"{split}-{int(row['idx']):04d}"
    image = image_from_cell(row["image"], label=f"emu_edit {sample_id} input image")
    identical = row["input_caption"] == row["output_caption"]
    return Sample(
        id=sample_id,
        kind="edit",
        inputs=ModelInputs(prompt=row["instruction"], source_image=image, edit_type=row["task"]),
        references={
            "source_image": image,
            "input_caption": row["input_caption"],
            "output_caption": row["output_caption"],
        },
        metadata={
            "task": row["task"],
            "idx": int(row["idx"]),
            "split": split,
            "hash": row.get("hash", ""),
            "identical_captions": identical,
        },
    )


def locate(task: Task, data_root: Path | None) -> Path:
    """The folder of the copy to read (``data_root``, the default data folder or the Hugging Face cache)."""
    return locate_copy(task, data_root, is_copy)


def load_emu_edit(task: Task, data_root: Path | None) -> list[Sample]:
    """Loads the requested split from a complete local copy or the Hugging Face cache."""
    return scan(task, locate(task, data_root)).complete_samples(task)


def fetch(task: Task, destination: Path, progress: bool = True) -> Path:
    """Downloads the hub dataset's files (both splits, parquet) into ``destination``."""
    return fetch_hub_snapshot(task, destination, progress)
