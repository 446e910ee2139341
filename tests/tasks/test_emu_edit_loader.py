"""Emu Edit loader: hub parquet and save_to_disk copies, identical-caption rows, the swapped-split trap."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
from dataset_miniatures import EMU_ROWS, bundled_task, emu_columns, tiny_image_bytes, with_data, write_hf_parquet

from mige_bench.errors import MigeBenchError
from mige_bench.loaders.emu_edit import load_emu_edit

MINIATURE_EXPECTED = {"test": {"rows": 5, "identical_captions": 2}, "validation": {"rows": 2}}


def miniature_task(**changes: object):
    return with_data(bundled_task("emu_edit_mige.yaml"), expected=MINIATURE_EXPECTED, **changes)


def test_test_split_rows_map_to_samples(emu_edit_root: Path) -> None:
    samples = load_emu_edit(miniature_task(), emu_edit_root)
    assert [sample.id for sample in samples] == ["test-0000", "test-0180", "test-0360", "test-0540", "test-0720"]
    first = samples[0]
    assert first.kind == "edit"
    assert first.inputs.prompt == " Make the sky night instead of day"  # verbatim, leading space kept
    assert first.inputs.edit_type == "global"
    assert first.inputs.multimodal_prompt is None
    assert first.inputs.source_image is first.references["source_image"]
    assert first.inputs.source_image.data == tiny_image_bytes((0, 0, 0))
    assert first.inputs.source_image.open().size == (16, 12)
    assert first.references["input_caption"] == "A car in the daytime."
    assert first.references["output_caption"] == "A car at night."
    assert "target_image" not in first.references
    assert first.metadata == {
        "task": "global",
        "idx": 0,
        "split": "test",
        "hash": "hash0",
        "identical_captions": False,
    }
    assert [sample.metadata["identical_captions"] for sample in samples] == [False, False, True, False, True]


def test_validation_split_is_selectable(emu_edit_root: Path) -> None:
    samples = load_emu_edit(miniature_task(split="validation"), emu_edit_root)
    assert [sample.id for sample in samples] == ["validation-0000", "validation-0180"]
    assert {sample.metadata["split"] for sample in samples} == {"validation"}


def test_save_to_disk_copy_loads_like_parquet(tmp_path: Path, emu_edit_root: Path) -> None:
    parquet = {split: str(emu_edit_root / "data" / f"{split}-*.parquet") for split in ("test", "validation")}
    saved = tmp_path / "saved"
    datasets.load_dataset("parquet", data_files=parquet).save_to_disk(str(saved))
    from_parquet = load_emu_edit(miniature_task(), emu_edit_root)
    from_disk = load_emu_edit(miniature_task(), saved)
    assert [(s.id, s.references, s.metadata) for s in from_disk] == [
        (s.id, s.references, s.metadata) for s in from_parquet
    ]


def test_rows_labelled_with_another_split_are_refused(tmp_path: Path) -> None:
    # The generations dataset stores the test rows under the name "validation".
    root = tmp_path / "generations"
    write_hf_parquet(root / "data" / "test-00000-of-00001.parquet", emu_columns(EMU_ROWS, "validation"), ("image",))
    with pytest.raises(MigeBenchError, match="emu_edit_test_set_generations"):
        load_emu_edit(miniature_task(), root)


def test_a_count_equal_to_the_other_split_is_reported_as_a_swap(tmp_path: Path) -> None:
    root = tmp_path / "swapped"
    write_hf_parquet(root / "data" / "test-00000-of-00001.parquet", emu_columns(EMU_ROWS[:2], "test"), ("image",))
    with pytest.raises(MigeBenchError, match=r"rows: 2, expected 5.*split names may be swapped"):
        load_emu_edit(miniature_task(), root)


def test_a_missing_split_names_the_splits_found(emu_edit_root: Path) -> None:
    with pytest.raises(MigeBenchError, match=r"No 'train' split .*test, validation"):
        load_emu_edit(miniature_task(split="train"), emu_edit_root)


def test_real_instruction_list_gives_3589_rows_690_identical_captions(shared_data: Path, tmp_path: Path) -> None:
    """The full MIGE copy of the test split (captions, tasks, idx; no images), rebuilt as hub parquet with tiny
    images, loads under the bundled task's own expected counts."""
    records = json.loads(
        (shared_data / "emu_edit_test" / "emu_edit_test_split_3589_from_MIGE.json").read_text(encoding="utf-8")
    )
    pixel = tiny_image_bytes(
        (0, 0, 0),
    )
    columns = {key: [record[key] for record in records] for key in records[0] if key != "image"}
    columns["image"] = [pixel] * len(records)
    write_hf_parquet(tmp_path / "emu" / "data" / "test-00000-of-00001.parquet", columns, ("image",))
    samples = load_emu_edit(bundled_task("emu_edit_mige.yaml"), tmp_path / "emu")
    assert len(samples) == 3589
    assert sum(sample.references["input_caption"] == sample.references["output_caption"] for sample in samples) == 690
    assert Counter(sample.metadata["task"] for sample in samples) == {
        "text": 534,
        "add": 533,
        "remove": 531,
        "color": 519,
        "local": 446,
        "style": 434,
        "background": 373,
        "global": 219,
    }
    excluded = Counter(sample.metadata["task"] for sample in samples if sample.metadata["identical_captions"])
    assert excluded == {
        "color": 110,
        "style": 100,
        "remove": 99,
        "text": 92,
        "add": 86,
        "local": 70,
        "background": 68,
        "global": 65,
    }
