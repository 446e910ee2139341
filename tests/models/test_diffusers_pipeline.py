"""The ``diffusers`` generator on tiny random pipelines of the real classes, loaded through the adapter's own path."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.models import MODELS
from mige_bench.models.diffusers_pipeline import (
    FAMILIES,
    PRESETS,
    DiffusersGenerator,
    fit_to_resolution,
    kontext_size,
    omnigen_prompt,
    qwen_plus_prompt,
)
from mige_bench.sample import ModelInputs, Sample

TWO_STEPS = {"num_inference_steps": "2"}


def noise_image(width: int, height: int, seed: int) -> ImageRef:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return ImageRef.from_pil(Image.fromarray(pixels), label=f"noise {seed}")


def edit_sample(sample_id: str, width: int = 64, height: int = 64, seed: int = 0) -> Sample:
    source = noise_image(width, height, seed)
    return Sample(id=sample_id, kind="edit", inputs=ModelInputs(prompt="make it red", source_image=source))


def pixels(image: Image.Image) -> bytes:
    return np.asarray(image).tobytes()


# -- InstructPix2Pix ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instruct_pix2pix(instruct_pix2pix_dir: Path) -> DiffusersGenerator:
    return DiffusersGenerator(pretrained=str(instruct_pix2pix_dir), resolution="64", **TWO_STEPS)


def test_instruct_pix2pix_returns_one_image_per_request_at_the_fitted_size(
    instruct_pix2pix: DiffusersGenerator,
) -> None:
    wide = edit_sample("wide", width=128, height=64)
    images = instruct_pix2pix.generate([edit_sample("square", width=40, height=40), wide, wide], [1, 2, 3])
    # Short side scaled up to a multiple of 64, both sides floored to multiples of 64.
    assert [image.size for image in images] == [(64, 64), (128, 64), (128, 64)]
    assert all(image.mode == "RGB" for image in images)


def test_instruct_pix2pix_same_seed_is_byte_identical_and_other_seeds_differ(
    instruct_pix2pix: DiffusersGenerator,
) -> None:
    sample = edit_sample("a")
    first, again, other = (instruct_pix2pix.generate([sample], [seed])[0] for seed in (7, 7, 8))
    assert pixels(first) == pixels(again)
    assert pixels(first) != pixels(other)


def test_instruct_pix2pix_image_does_not_depend_on_its_batch(instruct_pix2pix: DiffusersGenerator) -> None:
    target = edit_sample("target", seed=1)
    alone = instruct_pix2pix.generate([target], [7])[0]
    batch = instruct_pix2pix.generate([edit_sample("b", seed=2), target, edit_sample("c", seed=3)], [5, 7, 9])
    assert pixels(batch[1]) == pixels(alone)
    assert pixels(batch[0]) != pixels(alone)


def test_batch_calls_share_one_pipeline_call_with_per_image_noise(
    instruct_pix2pix_dir: Path, record_call_sizes
) -> None:
    batched = DiffusersGenerator(pretrained=str(instruct_pix2pix_dir), resolution="64", batch_calls="1", **TWO_STEPS)
    call_sizes = record_call_sizes(batched)
    target = edit_sample("target", seed=1)
    images = batched.generate([edit_sample("b", seed=2), target, target], [5, 7, 7])
    assert call_sizes == [3]
    # Same seed and inputs in one call: the same image up to one grey level (batched kernels round differently),
    # while a different seed gives a different image, so no noise is shared along the batch.
    same = np.abs(np.asarray(images[1], dtype=int) - np.asarray(images[2], dtype=int))
    other = np.abs(np.asarray(images[0], dtype=int) - np.asarray(images[1], dtype=int))
    assert same.max() <= 1
    assert other.mean() > 10 * same.mean() + 1


def test_instruct_pix2pix_refuses_a_sample_without_source_image(instruct_pix2pix: DiffusersGenerator) -> None:
    subject = Sample(id="s", kind="subject", inputs=ModelInputs(prompt="a dog", subject_images=(noise_image(8, 8, 0),)))
    with pytest.raises(MigeBenchError, match="supports edit"):
        instruct_pix2pix.generate([subject], [0])
    # The kinds the runner checks before generating come from the loaded pipeline's family.
    assert instruct_pix2pix.task_kinds == ("edit",)


def test_settings_record_pipeline_scheduler_and_call_arguments(instruct_pix2pix: DiffusersGenerator) -> None:
    settings = instruct_pix2pix.settings
    assert settings["pipeline"] == "StableDiffusionInstructPix2PixPipeline"
    assert settings["scheduler"] == "EulerAncestralDiscreteScheduler"
    assert settings["call_kwargs"] == {"num_inference_steps": 2}
    assert settings["dtype"] == "fp32"
    assert settings["resolution"] == 64


def test_preset_pins_published_settings_and_user_arguments_override_them(instruct_pix2pix_dir: Path) -> None:
    generator = DiffusersGenerator(
        preset="instruct-pix2pix", pretrained=str(instruct_pix2pix_dir), scheduler="DDIMScheduler", **TWO_STEPS
    )
    settings = generator.settings
    assert settings["call_kwargs"] == {"num_inference_steps": 2, "guidance_scale": 7.5, "image_guidance_scale": 1.5}
    assert settings["scheduler"] == "DDIMScheduler"
    assert settings["resolution"] == 512
    assert "edit_cli.py" in settings["sources"]["guidance_scale"]


def test_unknown_call_argument_is_refused_with_the_settable_ones(instruct_pix2pix_dir: Path) -> None:
    with pytest.raises(MigeBenchError, match=r"no settable call argument.*num_steps.*image_guidance_scale"):
        DiffusersGenerator(pretrained=str(instruct_pix2pix_dir), num_steps="2")
    with pytest.raises(MigeBenchError, match=r"no settable call argument.*prompt"):
        DiffusersGenerator(pretrained=str(instruct_pix2pix_dir), prompt="x")


# -- OmniGen -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def omnigen(omnigen_dir: Path) -> DiffusersGenerator:
    return DiffusersGenerator(pretrained=str(omnigen_dir), pipeline="OmniGenPipeline", **TWO_STEPS)


def subject_edit_sample(sample_id: str) -> Sample:
    source, entity = noise_image(48, 32, 10), noise_image(32, 32, 11)
    return Sample(
        id=sample_id,
        kind="subject_edit",
        inputs=ModelInputs(
            prompt="add the cat",
            source_image=source,
            subject_images=(entity,),
            multimodal_prompt="add the cat <imagehere> to <ImageHere>",
            placeholder_images=(entity, source),
        ),
    )


def test_omnigen_prompt_numbers_placeholders_in_order() -> None:
    assert omnigen_prompt("put <imagehere> into <ImageHere>") == (
        "put <img><|image_1|></img> into <img><|image_2|></img>"
    )


def test_omnigen_handles_all_three_kinds_at_the_expected_sizes(omnigen: DiffusersGenerator) -> None:
    subject = Sample(
        id="dog",
        kind="subject",
        inputs=ModelInputs(
            prompt="a dog in the jungle",
            subject_images=(noise_image(32, 32, 3),),
            multimodal_prompt="a <imagehere> in the jungle",
            placeholder_images=(noise_image(32, 32, 3),),
        ),
    )
    wide_edit = edit_sample("edit", width=48, height=32)
    generator = DiffusersGenerator(
        pretrained=str(omnigen.pretrained), height="32", width="16", **TWO_STEPS
    )  # pipeline read from model_index.json
    images = generator.generate([subject, wide_edit, subject_edit_sample("add")], [0, 1, 2])
    # Generation: the requested size; editing: the source's size (not the entity's, which comes first in "add").
    assert [image.size for image in images] == [(16, 32), (48, 32), (48, 32)]


def test_omnigen_same_seed_is_byte_identical_other_seeds_differ_and_batches_do_not_matter(
    omnigen: DiffusersGenerator,
) -> None:
    target = subject_edit_sample("target")
    alone, again, other = (omnigen.generate([target], [seed])[0] for seed in (4, 4, 5))
    batch = omnigen.generate([edit_sample("x"), target, target], [1, 4, 5])
    assert pixels(alone) == pixels(again) == pixels(batch[1])
    assert pixels(alone) != pixels(other)
    assert pixels(batch[2]) == pixels(other)


def test_omnigen_refuses_subject_images_without_a_multimodal_prompt(omnigen: DiffusersGenerator) -> None:
    sample = Sample(id="s", kind="subject", inputs=ModelInputs(prompt="a dog", subject_images=(noise_image(8, 8, 0),)))
    with pytest.raises(MigeBenchError, match="multimodal prompt"):
        omnigen.generate([sample], [0])


# -- FLUX.1 Kontext ----------------------------------------------------------------------------------------------------

# Kontext training resolutions are about a megapixel: tests keep the source size instead.
KONTEXT_AT_SOURCE_SIZE = {**TWO_STEPS, "_auto_resize": "0"}


@pytest.fixture(scope="module")
def flux_kontext(flux_kontext_dir: Path) -> DiffusersGenerator:
    return DiffusersGenerator(pretrained=str(flux_kontext_dir), **KONTEXT_AT_SOURCE_SIZE)


def test_kontext_size_picks_the_training_resolution_closest_to_the_source_aspect() -> None:
    assert kontext_size((640, 480)) == (1184, 880)
    assert kontext_size((512, 512)) == (1024, 1024)
    assert kontext_size((3000, 900)) == (1568, 672)
    assert kontext_size((650, 490), auto_resize=False) == (640, 480)


def test_flux_kontext_generates_at_the_source_kontext_size(flux_kontext: DiffusersGenerator) -> None:
    samples = [edit_sample("wide", width=48, height=32), edit_sample("odd", width=40, height=40)]
    images = flux_kontext.generate(samples, [1, 2])
    # Not diffusers' 1024x1024 default, and not re-fitted to an area: the source's size, floored to multiples of 16.
    assert [image.size for image in images] == [(48, 32), (32, 32)]
    assert all(image.mode == "RGB" for image in images)


def test_flux_kontext_same_seed_is_byte_identical_other_seeds_differ_and_batches_do_not_matter(
    flux_kontext: DiffusersGenerator,
) -> None:
    target = edit_sample("target", width=32, height=32, seed=1)
    alone, again, other = (flux_kontext.generate([target], [seed])[0] for seed in (7, 7, 8))
    batch = flux_kontext.generate([edit_sample("b", seed=2), target, edit_sample("c", seed=3)], [5, 7, 9])
    assert pixels(alone) == pixels(again) == pixels(batch[1])
    assert pixels(alone) != pixels(other)
    assert pixels(batch[0]) != pixels(alone)


def test_flux_kontext_batch_calls_share_a_call_per_source_size(flux_kontext_dir: Path, record_call_sizes) -> None:
    batched = DiffusersGenerator(pretrained=str(flux_kontext_dir), batch_calls="1", **KONTEXT_AT_SOURCE_SIZE)
    call_sizes = record_call_sizes(batched)
    square, wide = edit_sample("square", width=32, height=32), edit_sample("wide", width=48, height=32)
    images = batched.generate([square, square, wide], [1, 2, 3])
    assert call_sizes == [2, 1]
    assert [image.size for image in images] == [(32, 32), (32, 32), (48, 32)]
    assert pixels(images[0]) != pixels(images[1])


def test_flux_kontext_refuses_a_sample_without_source_image(flux_kontext: DiffusersGenerator) -> None:
    generation = Sample(id="g", kind="edit", inputs=ModelInputs(prompt="a dog"))
    with pytest.raises(MigeBenchError, match="has none"):
        flux_kontext.generate([generation], [0])


def test_flux_kontext_preset_pins_guidance_and_leaves_the_output_size_to_the_source(flux_kontext_dir: Path) -> None:
    generator = DiffusersGenerator(preset="flux-kontext", pretrained=str(flux_kontext_dir), **TWO_STEPS)
    assert generator.settings["call_kwargs"] == {"num_inference_steps": 2, "guidance_scale": 2.5}
    assert generator.settings["pipeline"] == "FluxKontextPipeline"
    with pytest.raises(MigeBenchError, match=r"no settable call argument.*max_area"):
        DiffusersGenerator(pretrained=str(flux_kontext_dir), max_area="1024")


# -- Qwen-Image-Edit and Qwen-Image-Edit-Plus --------------------------------------------------------------------------

# Both pipelines resize every input to about a megapixel and generate at that size, several seconds per call on CPU
# even at width 16: all tests but one shrink the area the pipelines aim at by 64x (128x128 px, same rounding rule).
QWEN_AREA_DIVISOR = 64


@pytest.fixture
def small_qwen_area(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus

    for module in (pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus):
        full_size = module.calculate_dimensions
        monkeypatch.setattr(
            module, "calculate_dimensions", lambda area, ratio, rule=full_size: rule(area // QWEN_AREA_DIVISOR, ratio)
        )


@pytest.fixture(scope="module")
def qwen_edit(qwen_image_edit_dir: Path) -> DiffusersGenerator:
    return DiffusersGenerator(pretrained=str(qwen_image_edit_dir), **TWO_STEPS)


@pytest.fixture(scope="module")
def qwen_edit_plus(qwen_image_edit_plus_dir: Path) -> DiffusersGenerator:
    return DiffusersGenerator(pretrained=str(qwen_image_edit_plus_dir), **TWO_STEPS)


def insert_sample(sample_id: str) -> Sample:
    """A MIGEBench-style subject edit whose source (48x32) comes first and entity (32x32) last."""
    source, entity = noise_image(48, 32, 1), noise_image(32, 32, 2)
    return Sample(
        id=sample_id,
        kind="subject_edit",
        inputs=ModelInputs(
            prompt="add the cat",
            source_image=source,
            subject_images=(entity,),
            multimodal_prompt="<imagehere> with the cat of <IMAGEHERE> added",
            placeholder_images=(source, entity),
        ),
    )


def test_qwen_image_edit_generates_about_a_megapixel_at_the_source_aspect(qwen_image_edit_dir: Path) -> None:
    generator = DiffusersGenerator(pretrained=str(qwen_image_edit_dir), num_inference_steps="1")
    (image,) = generator.generate([edit_sample("wide", width=48, height=32)], [0])
    # sqrt(1024^2 * 3/2) = 1254 -> 1248 and 836 -> 832: the source's aspect, not its size.
    assert image.size == (1248, 832)


def test_qwen_image_edit_same_seed_is_byte_identical_other_seeds_differ_and_batches_do_not_matter(
    qwen_edit: DiffusersGenerator, small_qwen_area: None
) -> None:
    target = edit_sample("target", width=48, height=32, seed=1)
    alone, again, other = (qwen_edit.generate([target], [seed])[0] for seed in (7, 7, 8))
    batch = qwen_edit.generate([edit_sample("b", seed=2), target, edit_sample("c", seed=3)], [5, 7, 9])
    assert alone.size == (160, 96)
    assert pixels(alone) == pixels(again) == pixels(batch[1])
    assert pixels(alone) != pixels(other)
    assert pixels(batch[0]) != pixels(alone)


def test_qwen_image_edit_batch_calls_share_a_call_per_source_size_with_true_cfg(
    qwen_image_edit_dir: Path, small_qwen_area: None, record_call_sizes
) -> None:
    batched = DiffusersGenerator(
        pretrained=str(qwen_image_edit_dir), batch_calls="1", true_cfg_scale="4", negative_prompt=" ", **TWO_STEPS
    )
    call_sizes = record_call_sizes(batched)
    square, wide = edit_sample("square", width=32, height=32), edit_sample("wide", width=48, height=32)
    images = batched.generate([square, square, wide], [1, 2, 3])
    assert call_sizes == [2, 1]
    assert [image.size for image in images] == [(128, 128), (128, 128), (160, 96)]
    assert pixels(images[0]) != pixels(images[1])


def test_qwen_image_edit_refuses_subject_edits(qwen_edit: DiffusersGenerator) -> None:
    with pytest.raises(MigeBenchError, match="supports edit"):
        qwen_edit.generate([insert_sample("insert")], [0])
    assert qwen_edit.task_kinds == ("edit",)


def test_qwen_plus_prompt_names_the_pictures_in_order() -> None:
    assert qwen_plus_prompt("put <imagehere> into <IMAGEHERE>") == "put Picture 1 into Picture 2"


def test_qwen_edit_plus_passes_the_placeholder_images_in_order(qwen_edit_plus: DiffusersGenerator) -> None:
    request = qwen_edit_plus.family.prepare(insert_sample("insert"))
    assert request.prompt == "Picture 1 with the cat of Picture 2 added"
    assert [image.size for image in request.images] == [(48, 32), (32, 32)]
    plain = qwen_edit_plus.family.prepare(edit_sample("plain", width=40, height=24))
    assert (plain.prompt, [image.size for image in plain.images]) == ("make it red", [(40, 24)])


def test_qwen_edit_plus_sizes_the_output_after_the_source_not_the_last_image(
    qwen_edit_plus: DiffusersGenerator, small_qwen_area: None
) -> None:
    images = qwen_edit_plus.generate([insert_sample("insert"), edit_sample("square", width=32, height=32)], [0, 1])
    # The pipeline alone would follow the last image (the 32x32 entity) and generate 128x128.
    assert [image.size for image in images] == [(160, 96), (128, 128)]


def test_qwen_edit_plus_same_seed_is_byte_identical_other_seeds_differ_and_batches_do_not_matter(
    qwen_edit_plus: DiffusersGenerator, small_qwen_area: None
) -> None:
    target = edit_sample("target", width=32, height=32, seed=1)
    alone, again, other = (qwen_edit_plus.generate([target], [seed])[0] for seed in (7, 7, 8))
    batch = qwen_edit_plus.generate([insert_sample("b"), target, edit_sample("c", seed=3)], [5, 7, 9])
    assert pixels(alone) == pixels(again) == pixels(batch[1])
    assert pixels(alone) != pixels(other)
    assert pixels(batch[2]) != pixels(alone)


def test_qwen_edit_plus_refuses_subject_images_without_a_multimodal_prompt(qwen_edit_plus: DiffusersGenerator) -> None:
    sample = Sample(
        id="s",
        kind="subject_edit",
        inputs=ModelInputs(
            prompt="add a cat", source_image=noise_image(8, 8, 0), subject_images=(noise_image(8, 8, 1),)
        ),
    )
    with pytest.raises(MigeBenchError, match="multimodal prompt"):
        qwen_edit_plus.generate([sample], [0])


def test_qwen_presets_pin_true_cfg_and_record_the_output_size_rule(
    qwen_image_edit_dir: Path, qwen_image_edit_plus_dir: Path
) -> None:
    edit = DiffusersGenerator(preset="qwen-image-edit", pretrained=str(qwen_image_edit_dir), **TWO_STEPS)
    assert edit.settings["call_kwargs"] == {"num_inference_steps": 2, "true_cfg_scale": 4.0, "negative_prompt": " "}
    assert "megapixel" in edit.settings["output_size"]
    plus = DiffusersGenerator(preset="qwen-image-edit-plus", pretrained=str(qwen_image_edit_plus_dir))
    assert plus.settings["call_kwargs"]["num_inference_steps"] == 40
    assert plus.settings["task_kinds"] == ["edit", "subject_edit"]
    with pytest.raises(MigeBenchError, match=r"no settable call argument.*height"):
        DiffusersGenerator(pretrained=str(qwen_image_edit_plus_dir), height="64")


# -- Loading, presets, registry ---------------------------------------------------------------------------------------


def test_missing_weights_name_the_hub_id_and_how_to_download_without_trying_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Online mode: the run must still not download (weights are fetched on purpose, with the command it names).
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    with pytest.raises(MigeBenchError, match=r"no-such-org/no-such-model': not downloaded.*`hf download"):
        DiffusersGenerator(pretrained="no-such-org/no-such-model", pipeline="StableDiffusionInstructPix2PixPipeline")


def _no_network(*args: object) -> None:
    raise AssertionError("the adapter tried to reach the network")


def test_gated_weights_say_how_to_authenticate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    generator = DiffusersGenerator.__new__(DiffusersGenerator)
    generator.pretrained = "black-forest-labs/FLUX.1-Kontext-dev"
    message = generator._missing_weights_message(gated=True)
    assert "accept its licence at https://huggingface.co/black-forest-labs/FLUX.1-Kontext-dev" in message
    assert "`hf auth login`" in message


def test_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MigeBenchError, match=r"no model_index\.json"):
        DiffusersGenerator(pretrained=str(tmp_path))


@pytest.mark.parametrize(
    ("pretrained", "shown"),
    [("{tmp}/absent", "{tmp}/absent"), ("./models/ip2p", "models/ip2p"), ("~/models/ip2p", "{tmp}/models/ip2p")],
    ids=["absolute", "dot-relative", "home"],
)
def test_missing_folder_says_so_and_what_to_download_into_it(
    pretrained: str, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    pretrained, shown = pretrained.format(tmp=tmp_path), shown.format(tmp=tmp_path)
    with pytest.raises(MigeBenchError) as raised:
        DiffusersGenerator(pretrained=pretrained)
    assert str(raised.value) == (
        f"Cannot load diffusers weights from {shown}: the folder does not exist. Download the pipeline into it with "
        f"`hf download <hub id> --local-dir {shown}`."
    )
    with pytest.raises(MigeBenchError) as raised:
        DiffusersGenerator(preset="flux-kontext", pretrained=pretrained)
    assert str(raised.value) == (
        f"Cannot load diffusers weights from {shown}: the folder does not exist. Download the pipeline into it with "
        f"`hf download black-forest-labs/FLUX.1-Kontext-dev --local-dir {shown}`; the repository is gated: accept its "
        "licence at https://huggingface.co/black-forest-labs/FLUX.1-Kontext-dev and run `hf auth login` (or set "
        "HF_TOKEN) first."
    )


def test_missing_value_that_is_both_a_relative_folder_and_a_hub_id_names_both_readings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    with pytest.raises(MigeBenchError) as raised:
        DiffusersGenerator(preset="instruct-pix2pix", pretrained="models/instruct-pix2pix")
    assert str(raised.value) == (
        "Cannot load diffusers weights 'models/instruct-pix2pix': not downloaded (runs never download weights); there "
        "is no folder models/instruct-pix2pix and no hub repository models/instruct-pix2pix in the Hugging Face cache. "
        "Download the pipeline into that folder with `hf download timbrooks/instruct-pix2pix --local-dir "
        "models/instruct-pix2pix`, or, if models/instruct-pix2pix is a hub id, fetch it into the cache with "
        "`hf download models/instruct-pix2pix`."
    )


def test_folder_under_home_loads_through_a_tilde_path(
    instruct_pix2pix_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MigeBenchError, match=f"from {tmp_path}/models/ip2p: the folder does not exist"):
        DiffusersGenerator(pretrained="~/models/ip2p")
    shutil.copytree(instruct_pix2pix_dir, tmp_path / "models" / "ip2p")
    generator = DiffusersGenerator(pretrained="~/models/ip2p", resolution="64", **TWO_STEPS)
    assert generator.settings["pipeline"] == "StableDiffusionInstructPix2PixPipeline"
    assert len(generator.generate([edit_sample("a")], [0])) == 1


def test_incomplete_folder_names_the_missing_file_and_how_to_complete_it(
    instruct_pix2pix_dir: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(instruct_pix2pix_dir, tmp_path / "ip2p")
    for weights in (folder / "unet").glob("diffusion_pytorch_model.*"):
        weights.unlink()
    expected = (
        re.escape(f"{folder} is an incomplete diffusers pipeline folder (")
        + f".*no file named diffusion_pytorch_model.* found in directory {re.escape(str(folder / 'unet'))}.*"
        + re.escape(f"); complete it with `hf download timbrooks/instruct-pix2pix --local-dir {folder}`.")
    )
    with pytest.raises(MigeBenchError, match=f"^{expected}$"):
        DiffusersGenerator(preset="instruct-pix2pix", pretrained=str(folder))


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(MigeBenchError, match="instruct-pix2pix"):
        DiffusersGenerator(preset="pix2pix")


def test_every_preset_cites_its_settings() -> None:
    for name, preset in PRESETS.items():
        assert preset.sources, name
        assert set(preset.source_call_kwargs) <= set(preset.call_kwargs), name


def test_every_preset_runs_a_supported_family() -> None:
    assert {preset.pipeline for preset in PRESETS.values()} <= set(FAMILIES)


def test_unsupported_pipeline_is_refused_before_any_download() -> None:
    with pytest.raises(MigeBenchError, match=r"not supported by the diffusers model.*BlipDiffusionPipeline"):
        DiffusersGenerator(pretrained="no-such-org/no-such-model", pipeline="StableDiffusionPipeline")


def test_registry_points_at_the_generator() -> None:
    assert MODELS["diffusers"] == "mige_bench.models.diffusers_pipeline:DiffusersGenerator"


def test_fit_to_resolution_follows_instruct_pix2pix_rule() -> None:
    assert fit_to_resolution(Image.new("RGB", (640, 480)), 512).size == (512, 384)
    assert fit_to_resolution(Image.new("RGB", (500, 333)), 512).size == (576, 384)
    assert fit_to_resolution(Image.new("RGB", (512, 512)), 512).size == (512, 512)
