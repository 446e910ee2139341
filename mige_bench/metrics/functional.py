"""The math of every metric, as small pure functions over arrays and images.

Metric classes (``similarity.py``, ``pixel.py``) own encoders and protocol bindings; everything that turns features or
pixels into a number lives here, so it can be checked against an independent numpy computation. Aggregation helpers
(:func:`summarize`, :func:`paired_bootstrap_diff`) are used by the results code and the ``compare`` regression gate.

Conventions: scores are computed per sample first and aggregated second (PROTOCOLS.md §1 "Always"); cosine scores are
raw, in [-1, 1], never ×100 (PROTOCOLS.md trap 1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

COSINE_EPS = 1e-8
"""Smallest norm divided by in cosines, as ``torch.nn.functional.cosine_similarity`` (used by the InstructPix2Pix,
Emu Edit and MIGE evaluation code): a zero vector has cosine 0 with anything instead of NaN."""

_BOOTSTRAP_CHUNK = 1_000_000
"""Resampled indices drawn at once by the bootstrap, to bound memory on large tasks."""


# --------------------------------------------------------------------------------------------------------------------
# Feature similarities
# --------------------------------------------------------------------------------------------------------------------


def l2_normalize(features: np.ndarray, eps: float = COSINE_EPS) -> np.ndarray:
    """Scales each row to unit Euclidean norm: ``x / max(‖x‖₂, eps)`` (rows of zeros stay zero).

    Args:
        features: ``[N, D]`` (or ``[D]``) array.
        eps: Lower bound on the norm divided by.

    Returns:
        Float64 array of the same shape.
    """
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, eps)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity ``⟨a, b⟩ / (max(‖a‖, ε) · max(‖b‖, ε))``.

    This is the DINO / CLIP-I / CLIP-T score of PROTOCOLS.md §1 (raw, in [-1, 1]; MIGE, MagicBrush and ImagenHub
    report it unscaled, Kosmos-G and torchmetrics' CLIPScore multiply by 100).

    Args:
        a: ``[N, D]`` features.
        b: ``[N, D]`` features, paired row by row with ``a``.

    Returns:
        ``[N]`` float64 similarities.
    """
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def directional_similarity(
    output_image: np.ndarray, source_image: np.ndarray, output_text: np.ndarray, source_text: np.ndarray
) -> np.ndarray:
    """CLIP directional similarity of InstructPix2Pix / Emu Edit, as computed by MIGE's evaluation code.

    ``cos( n(E_img(out)) − n(E_img(src)),  n(E_txt(out_caption)) − n(E_txt(in_caption)) )`` where ``n`` is L2
    normalisation, applied to each embedding **before** the difference (third-party code that subtracts raw
    embeddings computes a different number). A zero direction (output identical to source) scores 0, as with
    ``torch.nn.functional.cosine_similarity``. Rows whose two captions are identical are undefined by protocol and
    must be excluded by the caller, not passed here.

    Args:
        output_image: ``[N, D]`` image embeddings of the outputs.
        source_image: ``[N, D]`` image embeddings of the source images.
        output_text: ``[N, D]`` text embeddings of the output captions.
        source_text: ``[N, D]`` text embeddings of the input captions.

    Returns:
        ``[N]`` float64 similarities in [-1, 1].
    """
    image_direction = l2_normalize(output_image) - l2_normalize(source_image)
    text_direction = l2_normalize(output_text) - l2_normalize(source_text)
    return cosine_similarity(image_direction, text_direction)


# --------------------------------------------------------------------------------------------------------------------
# Pixel distances
# --------------------------------------------------------------------------------------------------------------------


def to_unit_range(image: Image.Image) -> np.ndarray:
    """An RGB image as a float64 ``[H, W, 3]`` array in [0, 1] (8-bit value / 255)."""
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def resize_to_reference(output: Image.Image, reference: Image.Image) -> Image.Image:
    """Resizes ``output`` to the reference's size with PIL bicubic (PROTOCOLS.md §1 ``l1``); no-op when equal."""
    if output.size == reference.size:
        return output
    return output.resize(reference.size, resample=Image.Resampling.BICUBIC)


def pixel_distance(
    output: Image.Image,
    reference: Image.Image,
    order: Literal[1, 2],
    keep: np.ndarray | None = None,
) -> float:
    """L1 (``order=1``) or L2 (``order=2``) distance at the reference's size, as in MagicBrush / Emu Edit / MIGE.

    ``mean over C×H×W of |a − b|`` (or ``(a − b)²``) where ``a`` is the output resized to the reference's size with
    PIL bicubic and both images are RGB scaled to [0, 1]. With ``keep`` (background preservation), the mean runs over
    the kept pixels only: ``Σ_{kept} Σ_c |a − b| / (3 · #kept)``.

    Args:
        output: The generated image.
        reference: The image it is compared with; defines the comparison size.
        order: 1 for mean absolute error, 2 for mean squared error.
        keep: Optional boolean ``[H, W]`` mask at the reference's size selecting the pixels compared.

    Returns:
        The distance (lower is better).

    Raises:
        ValueError: ``keep`` has the wrong shape or selects no pixel.
    """
    difference = to_unit_range(resize_to_reference(output, reference)) - to_unit_range(reference)
    per_value = np.abs(difference) if order == 1 else np.square(difference)
    if keep is None:
        return float(per_value.mean())
    if keep.shape != per_value.shape[:2]:
        raise ValueError(f"keep mask {keep.shape} does not match the reference size {per_value.shape[:2]}")
    if not keep.any():
        raise ValueError("keep mask selects no pixel")
    return float(per_value[keep].mean())


# --------------------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------------------


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, size ``len(values)``) drawn from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK // len(values))
    means = []
    for start in range(0, n_boot, rows_per_chunk):
        rows = min(rows_per_chunk, n_boot - start)
        indices = rng.integers(0, len(values), size=(rows, len(values)))
        means.append(values[indices].mean(axis=1))
    return np.concatenate(means)


def _as_finite_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; exclude such rows before aggregating")
    return array


def summarize(
    values: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float | int | None]:
    """Mean, standard error and percentile-bootstrap confidence interval of per-sample scores.

    ``mean = Σx/n``; ``stderr = s/√n`` with the sample standard deviation ``s`` (ddof = 1); the interval is the
    ``(1−confidence)/2`` and ``(1+confidence)/2`` percentiles (numpy's linear interpolation) of the means of
    ``n_boot`` resamples of size ``n`` drawn with replacement from ``numpy.random.default_rng(seed)``. This is the
    aggregation PROTOCOLS.md §1 asks for ("mean, standard error and a bootstrap 95% confidence interval"); the paper
    tables report the mean only. Seeded, so the same scores always give the same interval.

    Args:
        values: Per-sample scores, exclusions already removed (never NaN-averaged).
        n_boot: Number of bootstrap resamples.
        seed: Seed of the resampling generator.
        confidence: Coverage of the interval.

    Returns:
        ``{"mean", "stderr", "ci95_low", "ci95_high", "n"}``. With ``n == 0`` every statistic is ``None``; with
        ``n == 1`` the mean is the value and the spread statistics are ``None`` (undefined, not zero).

    Raises:
        ValueError: non-finite values, or a non-positive ``n_boot``.
    """
    array = _as_finite_vector(values, "values")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    n = len(array)
    summary: dict[str, float | int | None] = {
        "mean": None,
        "stderr": None,
        "ci95_low": None,
        "ci95_high": None,
        "n": n,
    }
    if n == 0:
        return summary
    summary["mean"] = float(array.mean())
    if n == 1:
        return summary
    summary["stderr"] = float(array.std(ddof=1) / np.sqrt(n))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(_bootstrap_means(array, n_boot, seed), [tail, 1.0 - tail])
    summary["ci95_low"], summary["ci95_high"] = float(low), float(high)
    return summary


def paired_bootstrap_diff(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int]:
    """Mean paired difference ``candidate − baseline`` with a paired percentile-bootstrap interval.

    ``d_i = candidate_i − baseline_i`` over the same samples in the same order; ``mean_diff = Σd/n``; the interval is
    the percentile bootstrap of the mean of ``d`` (resampling sample indices, so both runs are resampled together and
    the per-sample correlation between them is kept — the standard paired bootstrap test used to compare two
    systems on one test set). Used by ``mige-bench compare``: a regression is a difference whose interval lies
    entirely on the bad side of the tolerance.

    Args:
        baseline: Per-sample scores of the reference run.
        candidate: Per-sample scores of the new run, aligned with ``baseline``.
        n_boot: Number of bootstrap resamples.
        seed: Seed of the resampling generator.
        confidence: Coverage of the interval.

    Returns:
        ``{"mean_diff", "ci_low", "ci_high", "n"}``.

    Raises:
        ValueError: different lengths, no pairs, non-finite values or a non-positive ``n_boot``.
    """
    baseline_array = _as_finite_vector(baseline, "baseline")
    candidate_array = _as_finite_vector(candidate, "candidate")
    if len(baseline_array) != len(candidate_array):
        raise ValueError(f"paired scores differ in length: {len(baseline_array)} vs {len(candidate_array)}")
    if len(baseline_array) == 0:
        raise ValueError("no paired scores to compare")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    differences = candidate_array - baseline_array
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(_bootstrap_means(differences, n_boot, seed), [tail, 1.0 - tail])
    return {
        "mean_diff": float(differences.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": len(differences),
    }
