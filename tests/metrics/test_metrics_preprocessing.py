"""Pinned preprocessing against the implementations each protocol names (PROTOCOLS.md traps 3, 5, 11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms

from mige_bench.metrics.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    clip_preprocessing,
    crop_offset,
    dino_preprocessing,
)
from tests.metrics.builders import noise_image, solid_image

# Sizes whose centre-crop margin is 3 (no resize) and 7 (after resizing 448 -> 224): floor and round-half-even differ.
ODD_MARGIN_SIZES = [(227, 224), (462, 448)]


def torchvision_pipeline(resize: int, mean: tuple[float, ...], std: tuple[float, ...]) -> transforms.Compose:
    """OpenAI ``clip`` / DreamBooth-style torchvision preprocessing."""
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def hf_pil_clip_processor():
    """transformers' PIL-backed CLIP image processor (what MIGE's transformers 4.33 ``CLIPImageProcessor`` was)."""
    module = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    return module.CLIPImageProcessorPil()


def test_crop_offsets_floor_or_round_half_to_even() -> None:
    assert [crop_offset(margin, "hf") for margin in (0, 1, 3, 5, 7)] == [0, 0, 1, 2, 3]
    assert [crop_offset(margin, "torchvision") for margin in (0, 1, 3, 5, 7)] == [0, 0, 2, 2, 4]


@pytest.mark.parametrize("size", ODD_MARGIN_SIZES)
def test_clip_hf_rounding_matches_the_hf_image_processor(size: tuple[int, int]) -> None:
    image = noise_image(1, *size)
    expected = hf_pil_clip_processor()(images=image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(clip_preprocessing(224)([image], "hf"), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", ODD_MARGIN_SIZES)
def test_clip_torchvision_rounding_matches_torchvision(size: tuple[int, int]) -> None:
    image = noise_image(2, *size)
    expected = torchvision_pipeline(224, CLIP_MEAN, CLIP_STD)(image).unsqueeze(0)
    torch.testing.assert_close(clip_preprocessing(224)([image], "torchvision"), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", ODD_MARGIN_SIZES)
def test_crop_roundings_differ_on_odd_margins(size: tuple[int, int]) -> None:
    image = noise_image(3, *size)
    preprocessing = clip_preprocessing(224)
    assert (preprocessing([image], "hf") - preprocessing([image], "torchvision")).abs().max() > 0.5


def test_dino_resizes_to_256_then_crops_224_unlike_the_hf_vit_processor() -> None:
    image = noise_image(4, 300, 260)
    expected = torchvision_pipeline(256, IMAGENET_MEAN, IMAGENET_STD)(image).unsqueeze(0)
    pixels = dino_preprocessing()([image], "torchvision")
    torch.testing.assert_close(pixels, expected, atol=1e-6, rtol=0)
    straight_to_224 = transforms.Compose(
        [
            transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(image)
    assert (pixels[0] - straight_to_224).abs().max() > 0.5


def test_8_bit_input_is_scaled_to_unit_range_once() -> None:
    pixels = clip_preprocessing(224)([solid_image((255, 255, 255), 230, 224)], "hf")
    expected = (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(pixels[0, :, 0, 0].numpy(), expected, rtol=1e-6)
