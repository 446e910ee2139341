"""BLIP-Diffusion through the ``diffusers`` generator, and the transformers-5 compatibility layer it loads with."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import CLIPTextModel
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerEncoder

from mige_bench.errors import MigeBenchError
from mige_bench.models.blip_diffusion_compat import Blip2QFormerModelV5, ContextCLIPTextModelV5
from mige_bench.models.diffusers_pipeline import DiffusersGenerator, blip_diffusion_text
from mige_bench.sample import ModelInputs, Sample
from tests.models.test_diffusers_pipeline import TWO_STEPS, edit_sample, noise_image, pixels

BLIP_AT_32_PX = {**TWO_STEPS, "height": "32", "width": "32"}


@pytest.fixture(scope="module")
def blip_diffusion(blip_diffusion_dir: Path) -> DiffusersGenerator:
    return DiffusersGenerator(pretrained=str(blip_diffusion_dir), pipeline="BlipDiffusionPipeline", **BLIP_AT_32_PX)


def subject_sample(sample_id: str, prompt: str = "a dog in the jungle", seed: int = 0) -> Sample:
    reference = noise_image(48, 32, seed)
    return Sample(
        id=sample_id,
        kind="subject",
        inputs=ModelInputs(prompt=prompt, subject_images=(reference, noise_image(8, 8, 99)), subject_category="dog"),
    )


# -- Compatibility layer: transformers 4 behaviour on transformers 5 ---------------------------------------------------


def test_context_clip_keeps_the_causal_mask_that_transformers_5_would_drop(blip_diffusion_dir: Path) -> None:
    # Without context embeddings the context CLIP is plain (causal) CLIP: it must match transformers' own model.
    context_clip = ContextCLIPTextModelV5.from_pretrained(blip_diffusion_dir / "text_encoder")
    reference = CLIPTextModel(context_clip.config).eval()
    state = {key.removeprefix("text_model."): value for key, value in context_clip.state_dict().items()}
    reference.load_state_dict({key: value for key, value in state.items() if "position_ids" not in key})
    token_ids = torch.tensor([[0, 5, 7, 9, 11, 1]])
    with torch.inference_mode():
        ours = context_clip(input_ids=token_ids, ctx_embeddings=None, ctx_begin_pos=[2])[0]
        expected = reference(input_ids=token_ids).last_hidden_state
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_qformer_encoder_with_v4_call_adapter_matches_transformers_5_encoder(blip_diffusion_dir: Path) -> None:
    qformer = Blip2QFormerModelV5.from_pretrained(blip_diffusion_dir / "qformer")
    config = copy.deepcopy(qformer.config.qformer_config)
    config.use_qformer_text_input = True  # transformers' layer builds the text feed-forward only when asked
    reference = Blip2QFormerEncoder(config).eval()
    reference.load_state_dict(qformer.encoder.state_dict())
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 16, generator=generator)  # 4 query tokens + 3 text tokens
    image_features = torch.randn(2, 5, 16, generator=generator)
    text_mask = torch.ones(2, 7)
    text_mask[1, -2:] = 0  # padding in the second sequence
    self_mask = qformer.get_extended_attention_mask(text_mask, (2, 7), hidden.device)
    cross_mask = qformer.invert_attention_mask(torch.ones(2, 5))
    with torch.inference_mode():
        ours = qformer.encoder(
            hidden,
            attention_mask=self_mask,
            head_mask=qformer.get_head_mask(None, config.num_hidden_layers),
            encoder_hidden_states=image_features,
            encoder_attention_mask=cross_mask,
            query_length=4,
            return_dict=False,
        )[0]
        expected = reference(
            hidden, self_mask, image_features, encoder_attention_mask=cross_mask, query_length=4
        ).last_hidden_state
    assert torch.equal(ours, expected)


def test_inverted_attention_mask_has_v4_semantics(blip_diffusion_dir: Path) -> None:
    qformer = Blip2QFormerModelV5.from_pretrained(blip_diffusion_dir / "qformer")
    inverted = qformer.invert_attention_mask(torch.tensor([[1, 1, 0]]))
    minimum = torch.finfo(torch.float32).min
    assert inverted.shape == (1, 1, 1, 3)
    assert inverted.flatten().tolist() == [0.0, 0.0, minimum]
    assert qformer.invert_attention_mask(torch.ones(2, 4, 3)).shape == (2, 1, 4, 3)


# -- The family -------------------------------------------------------------------------------------------------------


def test_blip_diffusion_text_drops_only_a_leading_subject_phrase() -> None:
    assert blip_diffusion_text("a dog in the jungle", "dog") == "in the jungle"
    assert blip_diffusion_text("A Dog wearing a red hat", "dog") == "wearing a red hat"
    assert blip_diffusion_text("a stuffed animal on the beach", "stuffed animal") == "on the beach"
    # Nothing the prompt asks for is lost: an attribute before the noun, a DreamBooth token, another word.
    assert blip_diffusion_text("a red dog", "dog") == "a red dog"
    assert blip_diffusion_text("a sks dog in the jungle", "dog") == "a sks dog in the jungle"
    assert blip_diffusion_text("a doghouse in the snow", "dog") == "a doghouse in the snow"


def test_blip_diffusion_passes_reference_categories_and_subject_free_text(
    blip_diffusion: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    class RecordingPipe:
        def __call__(self, **kwargs: object) -> object:
            calls.append(kwargs)
            return type("Output", (), {"images": [Image.new("RGB", (32, 32))]})()

    monkeypatch.setattr(blip_diffusion, "pipe", RecordingPipe())
    blip_diffusion.generate([subject_sample("dog", prompt="a dog wearing a santa hat", seed=4)], [0])
    (call,) = calls
    assert call["prompt"] == ["wearing a santa hat"]
    assert call["source_subject_category"] == call["target_subject_category"] == ["dog"]
    assert pixels(call["reference_image"][0]) == pixels(noise_image(48, 32, 4).open())


def test_blip_diffusion_returns_one_image_per_request_at_the_call_size(blip_diffusion: DiffusersGenerator) -> None:
    images = blip_diffusion.generate([subject_sample("a"), subject_sample("b", prompt="a red dog")], [1, 2])
    assert [image.size for image in images] == [(32, 32), (32, 32)]
    assert all(image.mode == "RGB" for image in images)


def test_blip_diffusion_same_seed_is_byte_identical_other_seeds_differ_and_batches_do_not_matter(
    blip_diffusion: DiffusersGenerator,
) -> None:
    target = subject_sample("target", seed=1)
    alone, again, other = (blip_diffusion.generate([target], [seed])[0] for seed in (7, 7, 8))
    batch = blip_diffusion.generate([subject_sample("b", seed=2), target, subject_sample("c", seed=3)], [5, 7, 9])
    assert pixels(alone) == pixels(again) == pixels(batch[1])
    assert pixels(alone) != pixels(other)
    assert pixels(batch[0]) != pixels(alone)


def test_blip_diffusion_batch_calls_share_one_call(blip_diffusion_dir: Path, record_call_sizes) -> None:
    batched = DiffusersGenerator(pretrained=str(blip_diffusion_dir), batch_calls="1", **BLIP_AT_32_PX)
    call_sizes = record_call_sizes(batched)
    images = batched.generate([subject_sample("a", seed=1), subject_sample("b", seed=2)], [1, 2])
    assert call_sizes == [2]
    assert len(images) == 2
    assert pixels(images[0]) != pixels(images[1])


def test_blip_diffusion_refuses_samples_without_subject_category_or_of_other_kinds(
    blip_diffusion: DiffusersGenerator,
) -> None:
    uncategorised = Sample(
        id="u", kind="subject", inputs=ModelInputs(prompt="a dog", subject_images=(noise_image(8, 8, 0),))
    )
    with pytest.raises(MigeBenchError, match="category"):
        blip_diffusion.generate([uncategorised], [0])
    with pytest.raises(MigeBenchError, match="supports subject"):
        blip_diffusion.generate([edit_sample("e")], [0])


def test_blip_diffusion_preset_loads_from_a_folder_with_its_settings(blip_diffusion_dir: Path) -> None:
    generator = DiffusersGenerator(preset="blip-diffusion", pretrained=str(blip_diffusion_dir), **TWO_STEPS)
    settings = generator.settings
    assert settings["pipeline"] == "BlipDiffusionPipeline"
    assert settings["scheduler"] == "PNDMScheduler"
    assert settings["call_kwargs"]["guidance_scale"] == 7.5
    assert settings["call_kwargs"]["num_inference_steps"] == 2
    assert settings["task_kinds"] == ["subject"]


def test_blip_diffusion_missing_weights_name_the_hub_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MigeBenchError, match=r"no-such-org/no-such-blip.*`hf download"):
        DiffusersGenerator(pretrained="no-such-org/no-such-blip", pipeline="BlipDiffusionPipeline")
