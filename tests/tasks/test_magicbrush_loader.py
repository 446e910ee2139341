"""MagicBrush loader: official test layout and HF dev parquet (separate tasks), all-turn vs chained final-turn,
caption choice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from dataset_miniatures import bundled_task, magicbrush_instruction, with_data

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.loaders.magicbrush import load_magicbrush

MINIATURE_EXPECTED = {"sessions": 3, "turns": 6, "captioned_turns": 6}
MINIATURE_DEV_EXPECTED = {"sessions": 3, "turns": 6}
TURN_IDS = ["30-t1", "139-t1", "139-t2", "139-t3", "242-t1", "242-t2"]


def miniature_task(setting: str, **changes: object):
    return with_data(bundled_task(f"magicbrush_{setting}.yaml"), expected=MINIATURE_EXPECTED, **changes)


def miniature_dev_task(setting: str):
    return with_data(bundled_task(f"magicbrush_dev_{setting}.yaml"), expected=MINIATURE_DEV_EXPECTED)


def test_all_turn_edits_every_turn_from_its_ground_truth_input(magicbrush_official_root: Path) -> None:
    samples = load_magicbrush(miniature_task("all_turn"), magicbrush_official_root)
    assert [sample.id for sample in samples] == TURN_IDS
    assert all(sample.scored and sample.chain_from is None for sample in samples)
    images = magicbrush_official_root / "test" / "images" / "139"
    second = samples[2]
    assert second.kind == "edit"
    assert second.inputs.prompt == magicbrush_instruction("139", 2)
    assert second.inputs.source_image == ImageRef(path=images / "139-output1.png")
    assert second.references["target_image"] == ImageRef(path=images / "139-output2.png")
    assert second.references["mask"] == ImageRef(path=images / "139-mask2.png")
    assert second.references["output_caption"] == "local 139 2"
    assert second.metadata == {
        "session": "139",
        "turn": 2,
        "turns_in_session": 3,
        "split": "test",
        "caption_source": "local",
    }
    assert samples[1].inputs.source_image == ImageRef(path=images / "139-input.png")


def test_final_turn_chains_each_session_and_scores_only_its_last_turn(magicbrush_official_root: Path) -> None:
    samples = load_magicbrush(miniature_task("final_turn"), magicbrush_official_root)
    assert [sample.id for sample in samples] == TURN_IDS
    assert [sample.chain_from for sample in samples] == [None, None, "139-t1", "139-t2", None, "242-t1"]
    assert [sample.id for sample in samples if sample.scored] == ["30-t1", "139-t3", "242-t2"]
    chained = [sample for sample in samples if sample.chain_from]
    assert all(sample.inputs.source_image is None for sample in chained)
    assert samples[1].inputs.source_image.path.name == "139-input.png"


def test_global_captions_are_selectable_and_recorded(magicbrush_official_root: Path) -> None:
    samples = load_magicbrush(miniature_task("all_turn", captions="global"), magicbrush_official_root)
    assert samples[3].references["output_caption"] == "global 139 3"
    assert {sample.metadata["caption_source"] for sample in samples} == {"global"}


def test_the_test_folder_itself_is_accepted_as_root(magicbrush_official_root: Path) -> None:
    samples = load_magicbrush(miniature_task("all_turn"), magicbrush_official_root / "test")
    assert len(samples) == 6


def test_dev_task_reads_the_hf_parquet_into_the_same_records_without_captions(magicbrush_parquet_root: Path) -> None:
    samples = load_magicbrush(miniature_dev_task("final_turn"), magicbrush_parquet_root)
    assert [sample.id for sample in samples] == TURN_IDS
    assert [sample.id for sample in samples if sample.scored] == ["30-t1", "139-t3", "242-t2"]
    last = samples[3]
    assert last.inputs.prompt == magicbrush_instruction("139", 3)
    assert last.references["target_image"].open().getpixel((0, 0)) == (3, 0, 0)
    assert "output_caption" not in last.references
    assert last.metadata["split"] == "dev"
    assert last.metadata["caption_source"] == "none"
    assert samples[1].inputs.source_image.open().getpixel((0, 0)) == (0, 0, 0)


def test_each_split_is_read_only_from_its_own_layout(
    magicbrush_official_root: Path, magicbrush_parquet_root: Path
) -> None:
    # A dev copy can never be scored under a test task id (its numbers would join the test leaderboard), nor the
    # reverse.
    with pytest.raises(MigeBenchError, match=r"not look like a copy.*magicbrush@official:all_turn.*magicbrush_dev"):
        load_magicbrush(miniature_task("all_turn"), magicbrush_parquet_root)
    with pytest.raises(MigeBenchError, match=r"not look like a copy.*magicbrush_dev@official:all_turn.*data fetch"):
        load_magicbrush(miniature_dev_task("all_turn"), magicbrush_official_root)


def test_dev_tasks_have_no_clip_t_column_and_their_own_identity() -> None:
    for setting in ("all_turn", "final_turn"):
        test, dev = bundled_task(f"magicbrush_{setting}.yaml"), bundled_task(f"magicbrush_dev_{setting}.yaml")
        assert dev.id == f"magicbrush_dev@official:{setting}" != test.id
        assert set(test.metrics) - set(dev.metrics) == {"clip_t"}
        assert (test.data["split"], dev.data["split"]) == ("test", "dev")
        assert dev.data["expected"] == {"sessions": 266, "turns": 528}


def test_an_unknown_split_is_refused(magicbrush_official_root: Path) -> None:
    with pytest.raises(MigeBenchError, match=r"data.split must be one of \('test', 'dev'\), got 'train'"):
        load_magicbrush(miniature_task("all_turn", split="train"), magicbrush_official_root)


def test_a_missing_caption_file_and_output_refuse_the_copy(magicbrush_official_root: Path) -> None:
    (magicbrush_official_root / "test" / "local_descriptions.json").unlink()
    (magicbrush_official_root / "test" / "images" / "242" / "242-output2.png").unlink()
    with pytest.raises(MigeBenchError, match=r"captioned_turns: 0, expected 6; 2 missing files"):
        load_magicbrush(miniature_task("all_turn"), magicbrush_official_root)


def test_bundled_counts_expect_535_sessions_and_1053_turns(magicbrush_official_root: Path) -> None:
    with pytest.raises(MigeBenchError, match="sessions: 3, expected 535; turns: 6, expected 1053"):
        load_magicbrush(bundled_task("magicbrush_all_turn.yaml"), magicbrush_official_root)


def test_no_copy_explains_the_password_protected_zip() -> None:
    with pytest.raises(MigeBenchError, match="password-protected zip"):
        load_magicbrush(miniature_task("all_turn"), None)


def test_an_unknown_setting_is_refused(magicbrush_official_root: Path) -> None:
    task = replace(miniature_task("all_turn"), setting="some_turns")
    with pytest.raises(MigeBenchError, match="setting must be one of"):
        load_magicbrush(task, magicbrush_official_root)
