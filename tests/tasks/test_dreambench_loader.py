"""DreamBench loader: prompts and classes parsed from the official file, both protocols, refusal of partial copies."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from dataset_miniatures import DREAMBENCH_SUBJECTS, LIVE_TEMPLATES, OBJECT_TEMPLATES, bundled_task, with_data

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.loaders.dreambench import load_dreambench, render_prompt
from mige_bench.sample import IMAGE_PLACEHOLDER

MINIATURE_REFERENCES = {"backpack": "02.jpg", "cat": "01.jpg", "bear_plushie": "00.jpg"}
MINIATURE_COUNTS = {"subjects": 3, "images": 9, "prompts": 2 * 3 + 1 * 2}


def mige_task():
    return with_data(
        bundled_task("dreambench_mige.yaml"), reference_images=MINIATURE_REFERENCES, expected=MINIATURE_COUNTS
    )


def test_a_reference_list_that_misses_a_subject_is_refused(dreambench_root: Path) -> None:
    # Otherwise that subject would silently get the all-photos input of the dreambooth protocol.
    partial = {subject: photo for subject, photo in MINIATURE_REFERENCES.items() if subject != "cat"}
    with pytest.raises(MigeBenchError, match="reference_images misses subjects: cat"):
        load_dreambench(with_data(mige_task(), reference_images=partial), dreambench_root)


def test_mige_protocol_gives_one_fixed_reference_in_a_multimodal_prompt(dreambench_root: Path) -> None:
    samples = load_dreambench(mige_task(), dreambench_root)
    assert len(samples) == 8
    assert Counter(sample.metadata["category"] for sample in samples) == {"object": 6, "live": 2}
    by_id = {sample.id: sample for sample in samples}
    assert sorted(by_id) == sorted(
        [f"backpack-{i:02d}" for i in range(3)] + [f"bear_plushie-{i:02d}" for i in range(3)] + ["cat-00", "cat-01"]
    )
    plush = by_id["bear_plushie-01"]
    reference = ImageRef(path=dreambench_root / "dataset" / "bear_plushie" / "00.jpg")
    assert plush.kind == "subject"
    assert plush.inputs.prompt == "a red stuffed animal"
    assert plush.inputs.multimodal_prompt == f"a red{IMAGE_PLACEHOLDER}"
    assert plush.inputs.placeholder_images == plush.inputs.subject_images == (reference,)
    assert plush.inputs.source_image is None
    assert plush.references["reference_image"] == reference
    assert plush.references["caption"] == "a red stuffed animal"
    assert len(plush.references["reference_images"]) == 4
    assert plush.metadata == {
        "subject": "bear_plushie",
        "class_noun": "stuffed animal",
        "category": "object",
        "prompt_index": 1,
        "template": OBJECT_TEMPLATES[1],
    }
    cat = by_id["cat-01"]
    assert cat.inputs.multimodal_prompt == f"a{IMAGE_PLACEHOLDER}wearing a red hat"
    assert cat.metadata["template"] == LIVE_TEMPLATES[1]
    assert cat.references["caption"] == "a cat wearing a red hat"


def test_dreambooth_protocol_offers_every_photo_and_the_unique_token(dreambench_root: Path) -> None:
    task = with_data(bundled_task("dreambench_dreambooth.yaml"), expected=MINIATURE_COUNTS)
    samples = load_dreambench(task, dreambench_root / "dataset")
    backpack = next(sample for sample in samples if sample.id == "backpack-00")
    assert backpack.inputs.prompt == "a sks backpack in the jungle"
    assert backpack.references["caption"] == "a backpack in the jungle"
    assert backpack.inputs.multimodal_prompt is None
    assert len(backpack.inputs.subject_images) == DREAMBENCH_SUBJECTS["backpack"][1]
    assert backpack.references["reference_images"] == backpack.inputs.subject_images
    assert "reference_image" not in backpack.references


def test_render_prompt_drops_the_unique_token_without_double_spaces() -> None:
    assert render_prompt("a {0} {1} in the jungle", "", "dog") == "a dog in the jungle"
    assert render_prompt("a cube shaped {0} {1}", "sks", "dog") == "a cube shaped sks dog"


def test_a_missing_photo_refuses_the_copy(dreambench_root: Path) -> None:
    (dreambench_root / "dataset" / "cat" / "01.jpg").unlink()
    with pytest.raises(MigeBenchError, match=r"images: 8, expected 9.*1 missing files .*cat/01.jpg"):
        load_dreambench(mige_task(), dreambench_root)


def test_bundled_counts_refuse_a_miniature(dreambench_root: Path) -> None:
    task = with_data(bundled_task("dreambench_dreambooth.yaml"))
    with pytest.raises(MigeBenchError, match="subjects: 3, expected 30; images: 9, expected 158"):
        load_dreambench(task, dreambench_root)


def test_no_local_copy_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(MigeBenchError, match=r"mige-bench data fetch dreambench@mige"):
        load_dreambench(mige_task(), None)
    with pytest.raises(MigeBenchError, match="does not look like a copy"):
        load_dreambench(mige_task(), tmp_path)
    with pytest.raises(MigeBenchError, match=r"^--data-root \S+/typo does not exist; give the folder holding the "):
        load_dreambench(mige_task(), tmp_path / "typo")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(MigeBenchError, match=r"a_file is a file, not a folder"):
        load_dreambench(mige_task(), tmp_path / "a_file")


def test_real_dreambench_gives_30_subjects_158_images_750_prompts(shared_data: Path) -> None:
    samples = load_dreambench(bundled_task("dreambench_mige.yaml"), shared_data / "dreambench")
    assert len(samples) == 750
    assert len({sample.metadata["subject"] for sample in samples}) == 30
    assert len({ref.path for sample in samples for ref in sample.references["reference_images"]}) == 158
    assert Counter(sample.metadata["category"] for sample in samples) == {"live": 9 * 25, "object": 21 * 25}
    dog = next(sample for sample in samples if sample.id == "dog-00")
    assert dog.references["reference_image"].path.name == "02.jpg"
    assert dog.inputs.multimodal_prompt == f"a{IMAGE_PLACEHOLDER}in the jungle"
    assert dog.references["caption"] == "a dog in the jungle"
