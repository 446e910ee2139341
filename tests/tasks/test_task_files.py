"""Every bundled task YAML loads through the registry walk and binds the protocol the issue specifies."""

from __future__ import annotations

import json
from pathlib import Path

from mige_bench.task import available_tasks

BENCHMARK_TASK_IDS = {
    "dreambench@mige",
    "dreambench@dreambooth",
    "emu_edit@mige",
    "magicbrush@official:all_turn",
    "magicbrush@official:final_turn",
    "migebench_add@mige",
    "migebench_replace@mige",
}


def test_every_benchmark_task_loads_through_available_tasks() -> None:
    assert set(available_tasks()) >= BENCHMARK_TASK_IDS


def test_dreambench_protocols_differ_only_in_reference_choice_and_token() -> None:
    tasks = available_tasks()
    mige, dreambooth = tasks["dreambench@mige"], tasks["dreambench@dreambooth"]
    assert mige.metrics["dino"].args["against"] == "reference_image"
    assert dreambooth.metrics["dino"].args["against"] == "reference_images"
    assert mige.metrics["clip_t"].args["caption"] == dreambooth.metrics["clip_t"].args["caption"] == "caption"
    assert mige.images_per_sample == dreambooth.images_per_sample == 4
    assert mige.breakdown == dreambooth.breakdown == ("category", "subject")
    assert len(mige.data["reference_images"]) == 30
    assert "reference_images" not in dreambooth.data


def test_dreambench_reference_list_matches_the_kosmos_g_selection(shared_data: Path) -> None:
    prompts = json.loads((shared_data / "dreambench" / "prompts.json").read_text(encoding="utf-8"))
    selection = {
        subject: record["single_reference_image_kosmosg"].rsplit("/", 1)[-1]
        for subject, record in prompts["subjects"].items()
    }
    assert dict(available_tasks()["dreambench@mige"].data["reference_images"]) == selection


def test_emu_edit_excludes_identical_captions_and_scores_against_the_input() -> None:
    task = available_tasks()["emu_edit@mige"]
    assert task.metrics["clip_t"].args == {
        "caption": "output_caption",
        "exclude_if_equal": "input_caption",
        "crop_rounding": "hf",
    }
    assert task.metrics["clip_dir"].metric == "clip_dir"
    assert {task.metrics[name].args["against"] for name in ("l1", "clip_i", "dino")} == {"source_image"}
    assert task.data["split"] == "test"
    assert task.breakdown == ("task",)


def test_magicbrush_settings_share_one_protocol_with_torchvision_crops_and_local_captions() -> None:
    tasks = available_tasks()
    for setting in ("all_turn", "final_turn"):
        task = tasks[f"magicbrush@official:{setting}"]
        assert task.setting == setting
        assert task.data["captions"] == "local"
        assert task.metrics["clip_i"].args["crop_rounding"] == "torchvision"
        assert task.metrics["l2"].args == {"against": "target_image"}


def test_migebench_tasks_bind_entity_and_background_metrics() -> None:
    tasks = available_tasks()
    for subset in ("add", "replace"):
        task = tasks[f"migebench_{subset}@mige"]
        assert task.data["subset"] == subset
        assert task.metrics["entity_dino"].metric == "dino"
        assert task.metrics["entity_dino"].args["region"] == "mask_crop"
        assert task.metrics["entity_clip_i"].args["against"] == "entity_image"
        assert task.metrics["background_lpips"].metric == "lpips"
        assert task.metrics["background_l1"].args == {"against": "source_image", "region": "outside_mask"}
        assert task.metrics["clip_t"].args["caption"] == "target_caption"
