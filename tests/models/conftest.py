"""Tiny, randomly initialised diffusers pipelines of the real classes, saved to disk as a user's download would be.

Each fixture builds the components from configs (1-2 layers, a handful of channels, an in-process tokenizer, since
nothing may be downloaded), saves the pipeline with ``save_pretrained`` and returns the folder; the tests then load
it back through the adapter's own ``from_pretrained`` path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
    OmniGenPipeline,
    OmniGenTransformer2DModel,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    LlamaTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges): every lower-case letter, alone or word-final."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in LETTERS:
        vocab[letter] = len(vocab)
        vocab[f"{letter}</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_llama_tokenizer() -> LlamaTokenizer:
    """A character-level Llama tokenizer covering the characters of OmniGen's prompt template and image tags."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for character in f"▁{LETTERS}<>|_0123456789\n":
        vocab.setdefault(character, len(vocab))
    return LlamaTokenizer(vocab=vocab, merges=[])


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A character-level T5 unigram tokenizer: the word-start marker and every lower-case letter."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(letter, -3.0) for letter in LETTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """One CLIP text layer of width 16 (its pooled output is 16-dimensional too)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=16,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=1,
            projection_dim=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )


def tiny_vae(**config: object) -> AutoencoderKL:
    """Four blocks of four channels: the real 8x downsampling (OmniGen counts one token per 16x16 input pixels) at
    almost no cost. ``config`` adds to the AutoencoderKL config (FLUX's latent shift, for instance)."""
    return AutoencoderKL(
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=1,
        sample_size=32,
        **config,
    )


@pytest.fixture(scope="session")
def instruct_pix2pix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = tiny_clip_text_encoder(tokenizer)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=8,  # noisy latents + source-image latents
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        cross_attention_dim=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("instruct_pix2pix")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def omnigen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = tiny_llama_tokenizer()
    head_dim = 8
    transformer = OmniGenTransformer2DModel(
        in_channels=4,
        patch_size=2,
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=16,
        num_layers=1,
        pad_token_id=2,
        vocab_size=len(tokenizer.get_vocab()),
        rope_scaling={"short_factor": [1.0] * (head_dim // 2), "long_factor": [1.0] * (head_dim // 2)},
        pos_embed_max_size=16,
        time_step_dim=16,
    )
    pipe = OmniGenPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), tokenizer=tokenizer
    )
    folder = tmp_path_factory.mktemp("omnigen")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def flux_kontext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    clip_tokenizer, t5_tokenizer = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer.get_vocab()),
            d_model=16,
            d_ff=16,
            d_kv=8,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    transformer = FluxTransformer2DModel(
        in_channels=16,  # 4 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,  # T5 width
        pooled_projection_dim=16,  # CLIP width
        guidance_embeds=True,  # as in FLUX.1 Kontext [dev], which is guidance-distilled
        axes_dims_rope=(2, 2, 4),
    )
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=tiny_clip_text_encoder(clip_tokenizer),
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    folder = tmp_path_factory.mktemp("flux_kontext")
    pipe.save_pretrained(folder)
    return folder
