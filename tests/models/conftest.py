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
    OmniGenPipeline,
    OmniGenTransformer2DModel,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaTokenizer

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


def tiny_vae() -> AutoencoderKL:
    """Four blocks of four channels: the real 8x downsampling (OmniGen counts one token per 16x16 input pixels) at
    almost no cost."""
    return AutoencoderKL(
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=1,
        sample_size=32,
    )


@pytest.fixture(scope="session")
def instruct_pix2pix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(
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
