"""MIGEPipeline: the whole chain against the original code's golden tensors, and self-contained tiny-pipeline checks.

Golden tests load the fixture's original-key state dict through the converter and run conditioning + sampling from the
fixture's preprocessed inputs; they skip without ``../shared``. The preprocessing parity test additionally needs the
MIGE example images (``../shared/data/mige_examples``) with the SHA-256 recorded in the fixture config.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL
from mige_golden import assert_golden_close, golden_dir
from mige_tiny import random_image, tiny_pipeline
from safetensors.torch import load_file

from reference_model.convert_mige_checkpoint import load_original_models, model_configs, t5_fast_tokenizer
from reference_model.original_rng import OriginalScriptsRNG, advance_cpu_generator
from reference_model.pipeline_mige import (
    VAE_LATENT_SCALE,
    MIGEPipeline,
    blip_eval_pixels,
    letterbox,
    resize_center_crop,
    temporarily_on,
    to_uint8_images,
    vae_pixels,
)
from reference_model.scheduling_mige import SamplingSettings, sample_mige_latents
from reference_model.text_processing import format_prompt

EXAMPLES_DIR = Path(
    os.environ.get("MIGE_EXAMPLES_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "mige_examples")
)


# ------------------------------------------------------------------------------------------------ golden: full chain


@pytest.fixture(scope="module")
def golden_pipeline(golden) -> MIGEPipeline:
    """The fixture's tiny model, loaded from its original-key state dict by the converter, with the tiny VAE."""
    config = golden.config
    encoder_kwargs, transformer_kwargs = model_configs(
        config["t5_config"],
        config["qformer_bert_config"],
        mige_kwargs={**config["mige_defaults_kept"], **config["mige_kwargs"]},
        eva_kwargs={**config["eva_vit_kept"], **config["eva_vit_overrides"]},
        ffm_num_heads=config["ffm"]["num_heads"],
    )
    encoder, transformer = load_original_models(golden.state_dict(), encoder_kwargs, transformer_kwargs)
    vae = AutoencoderKL.from_config(json.loads((golden.root / "vae_tiny_config.json").read_text()))
    vae.load_state_dict(load_file(golden.root / "vae_tiny.safetensors"))
    tokenizer = t5_fast_tokenizer(golden.root / config["mige_kwargs"]["t5_model"])
    return MIGEPipeline(transformer=transformer, multimodal_encoder=encoder, vae=vae.eval(), tokenizer=tokenizer)


def _raw_instruction(case: dict) -> tuple[str, str]:
    """The unprocessed prompt of a case and its edit task (the pipeline's step 1 input)."""
    if case["kind"] == "edit":
        return case["instruction"], case["task"]
    return case["multi_prompt"], "local"


def _member_inputs(golden, name: str, slots: int) -> dict:
    case = golden.case(name)
    tensors = case.tensors
    real = tensors["ref_clip_real"].shape[0]
    pixels = torch.cat([tensors["ref_clip_real"], tensors["ref_clip_real"].new_zeros(slots - real, 3, 224, 224)])
    latents = tensors["ref_vae_real"]
    latents = torch.cat([latents, latents.new_zeros(slots - real, *latents.shape[1:])])
    return {"meta": case.meta["case"], "pixels": pixels, "latents": latents, "source": tensors["source"]}


@pytest.mark.parametrize("case_name", [path.stem for path in sorted(golden_dir().glob("case_*.json"))] or ["absent"])
@torch.no_grad()
def test_conditioning_and_sampling_reproduce_the_original_final_latent(golden, golden_pipeline, case_name) -> None:
    case = golden.case(case_name)
    slots = golden_pipeline.multimodal_encoder.config.max_references
    members = case.meta["case"].get("members") or [case_name.removeprefix("case_")]
    inputs = [_member_inputs(golden, f"case_{member}", slots) for member in members]

    # Step 1 of the pipeline: template + caption processing + per-segment tokenisation, exact.
    segment_ids = []
    for member in inputs:
        meta = member["meta"]
        instruction, task = _raw_instruction(meta)
        assert format_prompt(meta["kind"], instruction, edit_task=task) == meta["processed_prompt"]
        segments = golden_pipeline.segment_tokenizer(meta["processed_prompt"])
        assert segments == [segment["input_ids"] for segment in meta["prompt_segments"]]
        segment_ids.append(segments)

    # Steps 4 and 6 from the fixture's preprocessed inputs and initial noise.
    conditioning = golden_pipeline.encode_conditioning(
        segment_ids,
        torch.stack([member["pixels"] for member in inputs]),
        torch.stack([member["latents"] for member in inputs]),
        skip_unused_references=True,
    )
    solver = case.meta["case"]["dpms"]
    settings = SamplingSettings(
        guidance_mode=solver["uncondition"],
        steps=solver["steps"],
        guidance_scale=solver["cfg_scale_y"],
        source_guidance_scale=solver["cfg_scale_s"],
    )
    final = sample_mige_latents(
        golden_pipeline.transformer,
        conditioning.hidden_states,
        conditioning.attention_mask,
        torch.stack([member["source"] for member in inputs]),
        case.tensors["dpms.z"],
        settings,
    ).latents
    assert_golden_close(final, case.tensors["dpms.sample.final"], f"{case_name} dpms.sample.final")


def _example_images(golden) -> dict[str, PIL.Image.Image]:
    """The fixture's source images from the MIGE examples folder, if present with the recorded SHA-256."""
    images = {}
    for relative, info in golden.config["images_used"].items():
        path = EXAMPLES_DIR / relative
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != info["sha256"]:
            pytest.skip(f"MIGE example image {relative} not found with the recorded SHA-256 under {EXAMPLES_DIR}")
        images[relative] = PIL.Image.open(path).convert("RGB")
    return images


@torch.no_grad()
def test_image_preprocessing_matches_the_original_scripts(golden, golden_pipeline) -> None:
    """BLIP pixels exactly; VAE posterior mean/std of the task's transform through the tiny VAE."""
    images = _example_images(golden)
    size = golden_pipeline.image_size
    compared = 0
    for case_name in golden.case_names():
        meta, tensors = golden.case(case_name).meta["case"], golden.case(case_name).tensors
        if "members" in meta:
            continue
        if meta["kind"] == "edit":
            ordered = [(meta["image"], False)]
        else:
            ordered = [(path, meta["kind"] == "subject") for path in meta["entity_path"]]
            ordered += [(meta["source_path"][0], False)] if meta["kind"] == "subject_edit" else []
        for index, (relative, use_letterbox) in enumerate(ordered):
            if index < tensors["ref_clip_real"].shape[0]:
                clip = blip_eval_pixels(images[relative], golden_pipeline.multimodal_encoder.config.vision_image_size)
                torch.testing.assert_close(clip, tensors["ref_clip_real"][index], rtol=0, atol=0)
            if f"vae_posterior_mean.{index}" not in tensors:
                continue
            posterior = golden_pipeline.vae.encode(vae_pixels(images[relative], size, use_letterbox)[None]).latent_dist
            assert_golden_close(posterior.mean[0], tensors[f"vae_posterior_mean.{index}"], f"{case_name} mean {index}")
            assert_golden_close(posterior.std[0], tensors[f"vae_posterior_std.{index}"], f"{case_name} std {index}")
            compared += 1
    assert compared >= 3


# ------------------------------------------------------------------------------------------------ tiny pipeline


@pytest.fixture(scope="module")
def pipe() -> MIGEPipeline:
    return tiny_pipeline()


@pytest.fixture(scope="module")
def images() -> list[PIL.Image.Image]:
    return [random_image(80, 60, 1), random_image(50, 90, 2), random_image(64, 64, 3)]


def _generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def test_every_kind_returns_images_at_the_model_resolution(pipe, images) -> None:
    subject = pipe("a<ImageHere>next to a<ImageHere>", "subject", [images[:2]], num_inference_steps=3).images
    edit = pipe("make the sky red", "edit", source_image=images[0], num_inference_steps=3).images
    subject_edit = pipe(
        "add<ImageHere>to<ImageHere>", "subject_edit", [[images[2], images[1]]], images[1], num_inference_steps=3
    ).images
    for output in (subject, edit, subject_edit):
        assert len(output) == 1
        assert output[0].size == (pipe.image_size, pipe.image_size) == (64, 64)
        assert output[0].mode == "RGB"


def test_same_generator_seed_gives_the_same_image_and_another_seed_does_not(pipe, images) -> None:
    def run(seed: int):
        return pipe("make it red", "edit", source_image=images[0], num_inference_steps=3,
                    generator=torch.Generator().manual_seed(seed), output_type="latent").images  # fmt: skip

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-2


def test_per_image_noise_makes_each_image_independent_of_its_batch(pipe, images) -> None:
    prompts = ["make it red", "remove <imagehere> the cat", "turn the photo blue"]
    batched = pipe(prompts, "edit", source_image=images, num_inference_steps=3, generator=_generators(1, 2, 3),
                   output_type="latent").images  # fmt: skip
    for row in (0, 2):
        single = pipe(prompts[row], "edit", source_image=images[row], num_inference_steps=3,
                      generator=_generators(row + 1), output_type="latent").images  # fmt: skip
        # Batched and single DiT calls differ only by float reordering (a few ulp of the latent's scale).
        torch.testing.assert_close(single[0], batched[row], rtol=0, atol=1e-5 * batched.abs().max().item())


def test_original_noise_is_one_batch_tensor_from_the_device_stream(pipe) -> None:
    noise = pipe.prepare_original_initial_noise(2, (4, 8, 8), torch.Generator().manual_seed(3), torch.device("cpu"))
    torch.testing.assert_close(noise, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)))
    per_image = pipe.prepare_initial_noise((4, 8, 8), _generators(3, 3), torch.device("cpu"))
    assert torch.equal(per_image[0], per_image[1])  # each row comes from its own image's generator


def _original_rng() -> OriginalScriptsRNG:
    return OriginalScriptsRNG.seeded(replay_constructor=False)


@pytest.mark.parametrize(("kind", "references_per_item", "draws_per_item"), [("edit", 0, 1), ("subject_edit", 2, 3)])
def test_original_mode_draws_posterior_noise_from_one_cpu_stream_in_item_order(
    pipe, images, kind: str, references_per_item: int, draws_per_item: int
) -> None:
    # Spec §3.1.3: one randn(4, h, w) per reference in order, then MIGEBench's own source draw; edit reuses its one.
    rng = _original_rng()
    prompts = ["<ImageHere> and <ImageHere>", "<ImageHere> then <ImageHere>"] if references_per_item else ["a", "b"]
    references = [images[:references_per_item]] * 2 if references_per_item else None
    pipe(prompts, kind, reference_images=references, source_image=images[:2], num_inference_steps=2,
         generator=rng, noise="original", output_type="latent")  # fmt: skip
    expected = _original_rng().posterior
    latent_numel = 4 * (pipe.image_size // pipe.vae_scale_factor) ** 2
    advance_cpu_generator(expected, 2 * draws_per_item * latent_numel)
    assert torch.equal(rng.posterior.get_state(), expected.get_state())


def test_original_mode_continues_both_streams_across_batches_like_the_scripts(pipe, images) -> None:
    def run(batches: list[list[int]]) -> torch.Tensor:
        rng = _original_rng()
        latents = [
            pipe(
                ["make it red"] * len(rows),
                "edit",
                source_image=[images[row] for row in rows],
                num_inference_steps=2,
                generator=rng,
                noise="original",
                output_type="latent",
            ).images
            for rows in batches
        ]
        return torch.cat(latents)

    one_batch, two_batches, alone = run([[0, 1]]), run([[0], [1]]), run([[1]])
    assert torch.equal(two_batches, run([[0], [1]]))
    # The second batch continues both streams: on CPU, randn of whole 16-element chunks is chunk-invariant, so that
    # equals one batch of two. (On CUDA, Philox offsets per call make the split change z, spec §3.1.3.)
    scale = one_batch.abs().max().item()
    torch.testing.assert_close(one_batch, two_batches, rtol=0, atol=1e-5 * scale)
    # Item 1 run first instead gets the streams' first draws: a different image.
    assert (alone[0] - two_batches[1]).abs().max() > 1e-3 * scale


def test_original_mode_without_a_replay_object_uses_the_global_generators(pipe, images) -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(0)
        return pipe(["make it red"], "edit", source_image=images[:1], num_inference_steps=2, noise="original",
                    output_type="latent").images  # fmt: skip

    assert torch.equal(run(), run())
    with pytest.raises(ValueError, match="OriginalScriptsRNG"):
        pipe(["a"], "edit", source_image=images[:1], generator=torch.Generator(), noise="original")
    with pytest.raises(ValueError, match="noise='original'"):
        pipe(["a"], "edit", source_image=images[:1], generator=_original_rng())


def test_source_latent_per_kind(pipe, images) -> None:
    references = [[images[0]]]
    generators = _generators(4)
    refs, source = pipe.encode_images("edit", references, [images[0]], generators, slots=4)
    assert torch.equal(source[0], VAE_LATENT_SCALE * refs[0, 0])  # edit: the same posterior sample, scaled
    assert torch.equal(refs[0, 1:], torch.zeros_like(refs[0, 1:]))  # padded slots stay zero
    refs, source = pipe.encode_images("subject_edit", references, [images[0]], _generators(4), slots=4)
    assert (source[0] - VAE_LATENT_SCALE * refs[0, 0]).abs().max() > 1e-3  # an independent sample of the same image
    _, source = pipe.encode_images("subject", references, [None], _generators(4), slots=4)
    assert not source.any()


def test_subject_references_are_letterboxed_and_others_center_cropped() -> None:
    wide = PIL.Image.new("RGB", (200, 100), (255, 255, 255))
    boxed = letterbox(wide, 64)
    pixels = np.asarray(boxed)
    assert boxed.size == (64, 64)
    assert pixels[:16].max() == 0 and pixels[48:].max() == 0  # 64×32 image, 16 black rows above and below
    assert pixels[16:48].min() == 255
    cropped = resize_center_crop(wide, 64)
    assert cropped.size == (64, 64)
    assert np.asarray(cropped).min() == 255  # no bars: the short side is resized to 64
    assert vae_pixels(wide, 64, use_letterbox=True).amin() == -1.0
    assert blip_eval_pixels(wide, 32).shape == (3, 32, 32)


def test_quantisation_follows_save_image() -> None:
    decoded = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.5]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8_images(decoded)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_save_and_load_round_trip_gives_identical_images(pipe, images, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path)
    reloaded = MIGEPipeline.from_pretrained(tmp_path)
    assert type(reloaded.transformer).__name__ == "MIGETransformer2DModel"
    prompt = "add<ImageHere>to the left of<ImageHere>, small"
    assert reloaded.segment_tokenizer(prompt) == pipe.segment_tokenizer(prompt)
    kwargs = {"num_inference_steps": 3, "output_type": "np"}
    original = pipe(prompt, "subject_edit", [images[:2]], images[1], generator=_generators(9), **kwargs).images
    restored = reloaded(prompt, "subject_edit", [images[:2]], images[1], generator=_generators(9), **kwargs).images
    assert (original == restored).all()


def test_encoder_offload_returns_the_encoder_to_cpu_and_keeps_outputs(images) -> None:
    pipe = tiny_pipeline()
    expected = pipe("make it red", "edit", source_image=images[0], num_inference_steps=3,
                    generator=_generators(1), output_type="latent").images  # fmt: skip
    pipe.enable_encoder_offload()
    offloaded = pipe("make it red", "edit", source_image=images[0], num_inference_steps=3,
                     generator=_generators(1), output_type="latent").images  # fmt: skip
    assert pipe.multimodal_encoder.device.type == "cpu"
    assert torch.equal(offloaded, expected)


def test_temporarily_on_puts_back_the_very_same_cpu_tensors_instead_of_copying_them() -> None:
    module = torch.nn.BatchNorm1d(4)  # parameters and buffers
    before = {name: tensor.data_ptr() for name, tensor in module.state_dict().items()}
    with temporarily_on(module, torch.device("meta")):
        assert {tensor.device.type for tensor in module.state_dict().values()} == {"meta"}
    after = {name: tensor.data_ptr() for name, tensor in module.state_dict().items()}
    assert after == before  # no device→host copy: the original storage is back in place
    assert {tensor.device.type for tensor in module.state_dict().values()} == {"cpu"}
    assert "running_mean" in dict(module.named_buffers())


def test_original_mode_refuses_an_initial_noise_generator_on_another_device(pipe) -> None:
    with pytest.raises(ValueError, match=r"OriginalScriptsRNG.seeded\(device='meta'\)"):
        pipe.prepare_original_initial_noise(1, (4, 8, 8), torch.Generator(), torch.device("meta"))


# Channel 0, rows 0-1, columns 0-2 of the final latent of the tiny pipeline (seed 0), edit kind, 3 steps, seed 11.
# Untrained weights: x0 = (x - sigma * eps) / alpha is divided by alpha(1) ~ 0.006, hence the magnitudes.
PINNED_LATENT_SLICE = [[-414.53787, 96.47668, -224.33836], [297.16919, 294.08679, 171.94728]]


def test_pinned_latent_slice_of_the_seeded_tiny_pipeline(pipe, images) -> None:
    latents = pipe("make the sky red", "edit", source_image=images[0], num_inference_steps=3,
                   generator=_generators(11), output_type="latent").images  # fmt: skip
    torch.testing.assert_close(latents[0, 0, :2, :3], torch.tensor(PINNED_LATENT_SLICE), rtol=0, atol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "edit", "source_image": None}, "needs source_image"),
        ({"kind": "subject", "source_image": "IMAGE"}, "takes no source_image"),
        ({"kind": "edit", "reference_images": ["IMAGE"], "source_image": "IMAGE"}, "takes no reference_images"),
        ({"kind": "paint"}, "kind must be one of"),
        ({"kind": "subject", "generator": _generators(1, 2)}, "2 generators for 1 prompts"),
        ({"kind": "subject", "noise": "shared"}, "noise must be"),
    ],
    ids=["edit_without_source", "subject_with_source", "edit_with_references", "unknown_kind", "generators", "noise"],
)
def test_inconsistent_inputs_are_refused(pipe, images, kwargs: dict, message: str) -> None:
    kwargs = {key: images[0] if value == "IMAGE" else value for key, value in kwargs.items()}
    if kwargs.get("reference_images"):
        kwargs["reference_images"] = [images[0]]
    with pytest.raises(ValueError, match=message):
        pipe("make it red", num_inference_steps=2, **kwargs)


def test_non_finite_latents_fail_loudly_instead_of_decoding_to_a_plausible_image(pipe, images, monkeypatch) -> None:
    import reference_model.pipeline_mige as pipeline_module

    real_sampler = pipeline_module.sample_mige_latents

    def poisoned(*args, **kwargs):
        output = real_sampler(*args, **kwargs)
        output.latents[0, 0, 0, 0] = float("nan")
        return output

    monkeypatch.setattr(pipeline_module, "sample_mige_latents", poisoned)
    with pytest.raises(FloatingPointError, match=r"NaN or infinite latents for batch row\(s\) \[0\]"):
        pipe("make it red", "edit", source_image=images[0], num_inference_steps=2)
