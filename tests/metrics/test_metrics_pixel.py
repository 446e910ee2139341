"""L1, L2 and LPIPS metrics and the region rules (full, mask_crop, outside_mask) with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mige_bench.metrics.backbones import Backbones
from mige_bench.metrics.base import Excluded
from mige_bench.metrics.pixel import L1Distance, L2Distance, LpipsDistance
from tests.metrics.builders import make_sample, noise_image, ref, solid_image


def mask_image(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    """White (region) inside ``box`` = (left, top, right, bottom), black elsewhere."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = 255
    return Image.fromarray(pixels)


def test_l1_and_l2_of_solid_colours_at_the_reference_size(smoke_backbones: Backbones) -> None:
    sample = make_sample("s0", {"target_image": ref(solid_image((0, 0, 0), 16, 16))})
    output = solid_image((51, 102, 153), 40, 30)  # 0.2, 0.4, 0.6 after scaling; size differs from the target
    [l1] = L1Distance(smoke_backbones, against="target_image").score([output], [sample])
    [l2] = L2Distance(smoke_backbones, against="target_image").score([output], [sample])
    assert l1 == pytest.approx(0.4, rel=1e-12)
    assert l2 == pytest.approx((0.04 + 0.16 + 0.36) / 3, rel=1e-12)


def test_several_references_score_the_mean_distance(smoke_backbones: Backbones) -> None:
    references = (ref(solid_image((0, 0, 0), 8, 8)), ref(solid_image((255, 255, 255), 12, 12)))
    sample = make_sample("s0", {"reference_images": references})
    [l1] = L1Distance(smoke_backbones, against="reference_images").score([solid_image((51, 51, 51), 8, 8)], [sample])
    assert l1 == pytest.approx((0.2 + 0.8) / 2, rel=1e-12)


def test_outside_mask_ignores_the_edited_region(smoke_backbones: Backbones) -> None:
    source = noise_image(1, 32, 24)
    edited = np.asarray(source).copy()
    edited[4:12, 8:20] = 255 - edited[4:12, 8:20]  # the edit, inside the mask
    edited[20, 30] = (0, 0, 0)  # one background pixel damaged
    sample = make_sample("s0", {"source_image": ref(source), "mask": ref(mask_image(32, 24, (8, 4, 20, 12)))})
    metric = L1Distance(smoke_backbones, against="source_image", region="outside_mask")
    [l1] = metric.score([Image.fromarray(edited)], [sample])
    background_pixels = 32 * 24 - 8 * 12
    expected = np.abs(np.asarray(source, dtype=np.float64)[20, 30] / 255).sum() / (3 * background_pixels)
    assert l1 == pytest.approx(expected, rel=1e-12)


def test_mask_crop_blackens_outside_an_irregular_mask_and_crops_to_its_box(smoke_backbones: Backbones) -> None:
    output = solid_image((255, 255, 255), 20, 20)
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[5:15, 5:10] = 255  # an L shape: its 10x10 box has a 5x5 corner outside the mask
    mask[10:15, 10:15] = 255
    entity = solid_image((255, 255, 255), 10, 10)
    sample = make_sample("s0", {"entity": ref(entity), "mask": ref(Image.fromarray(mask))})
    [l1] = L1Distance(smoke_backbones, against="entity", region="mask_crop").score([output], [sample])
    assert l1 == pytest.approx(25 / 100, rel=1e-12)  # the blackened corner differs by 1 in every channel


def test_mask_crop_follows_the_output_size(smoke_backbones: Backbones) -> None:
    output = np.zeros((40, 40, 3), dtype=np.uint8)
    output[10:30, 20:40] = 200  # the entity at the mask's place, at twice the mask's resolution
    sample = make_sample(
        "s0", {"entity": ref(solid_image((200, 200, 200), 10, 10)), "mask": ref(mask_image(20, 20, (10, 5, 20, 15)))}
    )
    [l1] = L1Distance(smoke_backbones, against="entity", region="mask_crop").score([Image.fromarray(output)], [sample])
    assert l1 == pytest.approx(0.0, abs=1e-12)


def test_empty_masks_exclude_the_row_with_a_reason(smoke_backbones: Backbones) -> None:
    empty = ref(mask_image(8, 8, (0, 0, 0, 0)))
    full = ref(mask_image(8, 8, (0, 0, 8, 8)))
    image = ref(solid_image((0, 0, 0), 8, 8))
    crop = L1Distance(smoke_backbones, against="entity", region="mask_crop")
    outside = L1Distance(smoke_backbones, against="source_image", region="outside_mask")
    output = solid_image((9, 9, 9), 8, 8)
    assert crop.score([output], [make_sample("a", {"entity": image, "mask": empty})]) == [
        Excluded("empty ground-truth mask")
    ]
    assert outside.score([output], [make_sample("b", {"source_image": image, "mask": full})]) == [
        Excluded("mask covers the whole image")
    ]


def test_lpips_is_zero_for_identical_images_and_positive_otherwise(smoke_backbones: Backbones) -> None:
    image = noise_image(2, 64, 64)
    metric = LpipsDistance(smoke_backbones, against="target_image")
    same, different = metric.score(
        [image, noise_image(3, 96, 96)], [make_sample(f"s{i}", {"target_image": ref(image)}) for i in range(2)]
    )
    assert same == 0.0
    assert different > 0.0


def test_lpips_outside_mask_ignores_the_edited_region(smoke_backbones: Backbones) -> None:
    source = noise_image(4, 64, 64)
    edited = np.asarray(source).copy()
    edited[16:48, 16:48] = 0
    mask = ref(mask_image(64, 64, (16, 16, 48, 48)))
    metric = LpipsDistance(smoke_backbones, against="source_image", region="outside_mask")
    sample = make_sample("s0", {"source_image": ref(source), "mask": mask})
    assert metric.score([Image.fromarray(edited)], [sample]) == [0.0]
    edited[0:8, 0:8] = 255
    [damaged] = metric.score([Image.fromarray(edited)], [sample])
    assert damaged > 0.0
