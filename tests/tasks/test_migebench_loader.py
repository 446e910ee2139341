"""MIGEBench loader: authors' paths mapped onto the local copy, placeholders matched to entity_path order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataset_miniatures import MIGEBENCH_IDS, bundled_task, migebench_record, with_data

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.loaders.migebench import load_migebench
from mige_bench.sample import IMAGE_PLACEHOLDER


def test_add_records_place_the_entity_before_the_source(migebench_root: Path) -> None:
    samples = load_migebench(bundled_task("migebench_add.yaml"), migebench_root)
    assert [sample.id for sample in samples] == ["add-21", "add-3"]
    sample = samples[0]
    folder = migebench_root / "add"
    entity = ImageRef(path=folder / "add_entity" / "21_entity_black.jpg")
    source = ImageRef(path=folder / "add_source" / "21_source.jpg")
    assert sample.kind == "subject_edit"
    assert sample.inputs.prompt == "add instruction 21 "
    assert sample.inputs.multimodal_prompt == (
        f"Add{IMAGE_PLACEHOLDER}to the bottom center of{IMAGE_PLACEHOLDER}. The signboard is small."
    )
    assert sample.inputs.placeholder_images == (entity, source)
    assert sample.inputs.source_image == source
    assert sample.inputs.subject_images == (entity,)
    assert sample.references == {
        "target_image": ImageRef(path=folder / "add_target" / "21_target.jpg"),
        "source_image": source,
        "mask": ImageRef(path=folder / "add_mask" / "21_mask.jpg"),
        "entity_image": entity,
        "entity_image_white": ImageRef(path=folder / "add_entity" / "21_entity_white.jpg"),
        "target_caption": "target caption add 21",
    }
    assert sample.metadata == {"subset": "add", "idx": 21, "object": "a signboard", "width": 1024, "height": 1024}


def test_replace_records_place_the_source_first_and_normalise_marker_case(migebench_root: Path) -> None:
    samples = load_migebench(bundled_task("migebench_replace.yaml"), migebench_root)
    assert [sample.id for sample in samples] == [f"replace-{idx}" for idx in MIGEBENCH_IDS["replace"]]
    sample = samples[0]
    assert sample.inputs.multimodal_prompt == (
        f"replace the pencil in{IMAGE_PLACEHOLDER}with{IMAGE_PLACEHOLDER}in the center"
    )
    assert [image.path.name for image in sample.inputs.placeholder_images] == [
        "20_source.jpg",
        "20_entity_black.jpg",
    ]
    assert sample.metadata["object"] == "pen"


def test_a_missing_entity_image_refuses_the_copy(migebench_root: Path) -> None:
    (migebench_root / "replace" / "replace_entity" / "7_entity_black.jpg").unlink()
    with pytest.raises(MigeBenchError, match=r"1 missing files .*7_entity_black.jpg"):
        load_migebench(bundled_task("migebench_replace.yaml"), migebench_root)


def test_marker_count_must_match_entity_path(migebench_root: Path) -> None:
    record = migebench_record("add", 21)
    record["multi_prompt"] = "Add<imagehere>somewhere"
    (migebench_root / "add_bench.json").write_text(json.dumps([record]), encoding="utf-8")
    with pytest.raises(MigeBenchError, match="1 image markers but entity_path lists 2 images"):
        load_migebench(bundled_task("migebench_add.yaml"), migebench_root)


def test_expected_counts_are_enforced_when_given(migebench_root: Path) -> None:
    task = with_data(bundled_task("migebench_add.yaml"), expected={"records": 500})
    with pytest.raises(MigeBenchError, match="records: 2, expected 500"):
        load_migebench(task, migebench_root)


def test_real_example_records_load(shared_data: Path, tmp_path: Path) -> None:
    """The two real records from MIGE's repository (authors' paths) resolve onto a local folder."""
    records = json.loads(
        (shared_data / "migebench" / "migebench_records_idx21_add_idx20_replace.json").read_text(encoding="utf-8")
    )
    root = tmp_path / "MIGEBench"
    for record in records:
        subset = Path(record["image"]).parts[-3]
        (root / f"{subset}_bench.json").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{subset}_bench.json").write_text(json.dumps([record]), encoding="utf-8")
        for key in ("image", "source_path", "mask_path", "entity_path", "entity_path_white"):
            for recorded in record[key] if isinstance(record[key], list) else [record[key]]:
                target = root.joinpath(*Path(recorded).parts[-3:])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"not decoded by the loader")
    add = load_migebench(bundled_task("migebench_add.yaml"), root)
    replace = load_migebench(bundled_task("migebench_replace.yaml"), root)
    assert [sample.id for sample in add + replace] == ["add-21", "replace-20"]
    assert add[0].inputs.placeholder_images[0].path.name == "21_entity_black.jpg"
    assert replace[0].inputs.placeholder_images[0].path.name == "20_source.jpg"
    assert replace[0].references["target_caption"].startswith("The image shows a wooden desk")
