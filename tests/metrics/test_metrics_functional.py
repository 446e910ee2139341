"""The pure metric math against independent numpy computations and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mige_bench.metrics import functional
from tests.metrics.builders import noise_image, solid_image


def test_cosine_matches_numpy_definition() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    expected = [x @ y / (np.sqrt(x @ x) * np.sqrt(y @ y)) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(functional.cosine_similarity(a, b), expected, rtol=1e-12)


def test_cosine_of_identical_and_opposite_rows_is_one_and_minus_one() -> None:
    rows = np.random.default_rng(2).normal(size=(3, 4))
    np.testing.assert_allclose(functional.cosine_similarity(rows, rows), 1.0, rtol=1e-12)
    np.testing.assert_allclose(functional.cosine_similarity(rows, -3 * rows), -1.0, rtol=1e-12)


def test_cosine_is_raw_not_scaled_by_100() -> None:
    assert functional.cosine_similarity(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]))[0] == pytest.approx(
        1 / np.sqrt(2), rel=1e-12
    )


def test_directional_similarity_normalises_before_the_difference() -> None:
    rng = np.random.default_rng(3)
    out_img, src_img, out_txt, src_txt = (rng.normal(size=(4, 6)) * scale for scale in (1, 5, 0.2, 9))

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    image_direction, text_direction = unit(out_img) - unit(src_img), unit(out_txt) - unit(src_txt)
    expected = np.sum(unit(image_direction) * unit(text_direction), axis=1)
    np.testing.assert_allclose(
        functional.directional_similarity(out_img, src_img, out_txt, src_txt), expected, rtol=1e-12
    )
    unnormalised = np.sum(unit(out_img - src_img) * unit(out_txt - src_txt), axis=1)
    assert not np.allclose(expected, unnormalised)


def test_directional_similarity_of_an_unchanged_image_is_zero() -> None:
    rng = np.random.default_rng(4)
    image, out_txt, src_txt = rng.normal(size=(2, 5)), rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    np.testing.assert_array_equal(functional.directional_similarity(image, image, out_txt, src_txt), 0.0)


def test_l1_and_l2_match_numpy_on_same_size_images() -> None:
    output, reference = noise_image(1), noise_image(2)
    a = np.asarray(output, dtype=np.float64) / 255
    b = np.asarray(reference, dtype=np.float64) / 255
    assert functional.pixel_distance(output, reference, 1) == pytest.approx(np.abs(a - b).mean(), rel=1e-12)
    assert functional.pixel_distance(output, reference, 2) == pytest.approx(((a - b) ** 2).mean(), rel=1e-12)


def test_identical_images_have_zero_distance() -> None:
    image = noise_image(5)
    assert functional.pixel_distance(image, image.copy(), 1) == 0.0
    assert functional.pixel_distance(image, image.copy(), 2) == 0.0


def test_output_is_resized_to_the_reference_size() -> None:
    # A solid colour stays solid under bicubic resizing, so the golden value is exact: (10 + 20 + 30) / 3 / 255.
    output, reference = solid_image((10, 20, 30), 50, 40), solid_image((0, 0, 0), 20, 20)
    assert functional.pixel_distance(output, reference, 1) == pytest.approx(20 / 255, rel=1e-12)
    assert functional.pixel_distance(output, reference, 2) == pytest.approx((100 + 400 + 900) / 3 / 255**2, rel=1e-12)
    noisy = noise_image(6, 50, 40)
    resized = np.asarray(noisy.resize((20, 20), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    assert functional.pixel_distance(noisy, reference, 1) == pytest.approx(resized.mean(), rel=1e-12)


def test_keep_mask_averages_over_kept_pixels_only() -> None:
    reference = solid_image((0, 0, 0), 4, 2)
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # a difference at a dropped pixel
    pixels[1, 3] = (51, 102, 153)  # a difference at a kept pixel
    keep = np.ones((2, 4), dtype=bool)
    keep[0, 0] = False
    expected = (0.2 + 0.4 + 0.6) / (3 * 7)
    assert functional.pixel_distance(Image.fromarray(pixels), reference, 1, keep) == pytest.approx(expected, rel=1e-12)


def test_summarize_mean_and_stderr_match_numpy() -> None:
    values = np.random.default_rng(7).normal(0.5, 0.1, size=200)
    summary = functional.summarize(values)
    assert summary["n"] == 200
    assert summary["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert summary["stderr"] == pytest.approx(values.std(ddof=1) / np.sqrt(200), rel=1e-12)


def test_summarize_interval_is_the_percentile_bootstrap_of_the_mean() -> None:
    values = np.random.default_rng(8).uniform(size=30)
    indices = np.random.default_rng(11).integers(0, 30, size=(500, 30))
    expected = np.quantile(values[indices].mean(axis=1), [0.025, 0.975])
    summary = functional.summarize(values, n_boot=500, seed=11)
    assert (summary["ci95_low"], summary["ci95_high"]) == pytest.approx(tuple(expected), rel=1e-12)


def test_summarize_interval_is_seeded_contains_the_mean_and_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(9)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    first, second = functional.summarize(small, seed=3), functional.summarize(small, seed=3)
    assert first == second
    assert functional.summarize(small, seed=4)["ci95_low"] != first["ci95_low"]
    assert first["ci95_low"] < first["mean"] < first["ci95_high"]
    wide = first["ci95_high"] - first["ci95_low"]
    narrow = functional.summarize(large, seed=3)
    assert narrow["ci95_high"] - narrow["ci95_low"] < wide / 5


def test_summarize_reports_undefined_spread_as_none() -> None:
    assert functional.summarize([]) == {"mean": None, "stderr": None, "ci95_low": None, "ci95_high": None, "n": 0}
    assert functional.summarize([0.25]) == {"mean": 0.25, "stderr": None, "ci95_low": None, "ci95_high": None, "n": 1}


def test_summarize_refuses_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        functional.summarize([0.1, float("nan")])


def test_paired_bootstrap_of_a_constant_shift_is_exact() -> None:
    baseline = np.random.default_rng(10).uniform(size=50)
    result = functional.paired_bootstrap_diff(baseline, baseline - 0.125)
    assert result["n"] == 50
    for key in ("mean_diff", "ci_low", "ci_high"):
        assert result[key] == pytest.approx(-0.125, abs=1e-12)


def test_paired_bootstrap_interval_brackets_the_mean_difference_and_is_seeded() -> None:
    rng = np.random.default_rng(12)
    baseline = rng.uniform(size=100)
    candidate = baseline + rng.normal(0.05, 0.02, size=100)
    result = functional.paired_bootstrap_diff(baseline, candidate, seed=1)
    assert result == functional.paired_bootstrap_diff(baseline, candidate, seed=1)
    assert result["mean_diff"] == pytest.approx((candidate - baseline).mean(), rel=1e-12)
    assert 0 < result["ci_low"] < result["mean_diff"] < result["ci_high"]


def test_paired_bootstrap_refuses_unaligned_runs() -> None:
    with pytest.raises(ValueError, match="length"):
        functional.paired_bootstrap_diff([0.1, 0.2], [0.1])
