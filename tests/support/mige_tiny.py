"""A tiny, randomly initialised MIGE pipeline built in code (nothing is downloaded), for CPU tests.

Sizes: the ``tiny`` multimodal encoder (224-px ViT of width 32, T5 of width 32), a 2-block DiT of width 32 on an 8×8
latent, and a 4-level VAE with 8× downsampling, so images are 64×64. Every parameter is redrawn from a seeded
generator, independent of library init code, so pinned numbers only move when the computation does.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import Unigram
from transformers import PreTrainedTokenizerFast

from reference_model.multimodal_encoder import MULTIMODAL_ENCODER_SIZES, MIGEMultimodalEncoder
from reference_model.pipeline_mige import MIGEPipeline
from reference_model.transformer_mige import MIGETransformer2DModel

TINY_TRANSFORMER = {"input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 4}
TINY_VAE = {
    "block_out_channels": (8, 8, 8, 8),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 4,
    "sample_size": 64,
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level T5-style unigram tokenizer (pad 0, EOS 1, unk 2, "▁" 3) with the 4.33 fast pipeline."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{letter}", -2.5) for letter in LETTERS]
    pieces += [(character, -3.0) for character in LETTERS + "0123456789',-/?<>"]
    tokenizer = Tokenizer(Unigram(pieces, unk_id=2))
    tokenizer.normalizer = normalizers.Replace(" {2,}", " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter: N(0, 1/fan_in) matrices, 1 + N(0, 0.1) norm weights, N(0, 0.1) other vectors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(module.named_parameters()):
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() >= 2:
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
            elif "norm" in name.lower() or name.split(".")[-2].startswith("ln"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)


def tiny_components(seed: int = 0) -> tuple[MIGETransformer2DModel, MIGEMultimodalEncoder, AutoencoderKL]:
    """The three models of the tiny pipeline with seeded random weights, in eval mode."""
    encoder = MIGEMultimodalEncoder(**MULTIMODAL_ENCODER_SIZES["tiny"])
    transformer = MIGETransformer2DModel(
        **TINY_TRANSFORMER,
        caption_channels=encoder.config.t5_d_model,
        model_max_length=encoder.config.max_length,
    )
    vae = AutoencoderKL(**TINY_VAE)
    for offset, model in enumerate((transformer, encoder, vae)):
        randomize_(model, seed + offset)
    with torch.no_grad():
        transformer.null_caption.normal_(generator=torch.Generator().manual_seed(seed + 10))
    return transformer.eval(), encoder.eval(), vae.eval()


def tiny_pipeline(seed: int = 0) -> MIGEPipeline:
    """The whole tiny pipeline (fp32, CPU)."""
    transformer, encoder, vae = tiny_components(seed)
    return MIGEPipeline(transformer=transformer, multimodal_encoder=encoder, vae=vae, tokenizer=tiny_tokenizer())


def random_image(width: int, height: int, seed: int) -> PIL.Image.Image:
    """A noise image with a smooth gradient, so that resizing filters matter."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 200, width, dtype=np.float64)[None, :, None]
    pixels = np.clip(gradient + rng.integers(0, 56, size=(height, width, 3)), 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(pixels)
