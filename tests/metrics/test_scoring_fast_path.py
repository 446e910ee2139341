"""The runner's scoring fast path (batched, decoded in workers, features shared by metrics, references cached) gives
the numbers of a plain per-image computation, and a second model on the same task only encodes its new images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mige_bench import run_folder as rf
from mige_bench.images import ImageRef
from mige_bench.metrics.backbones import Backbones
from mige_bench.metrics.base import Excluded
from mige_bench.metrics.embedding_cache import EmbeddingCache
from mige_bench.runner import (
    ExecutionOptions,
    GenerationRequest,
    build_metrics,
    load_samples,
    run,
    score_images,
    task_from_manifest,
)
from mige_bench.sample import sample_digests
from tests.metrics.builders import noise_image

NOISE = "tests.harness.test_runner:NoiseGenerator"
OPTIONS = ExecutionOptions(progress=False, batch_size=4, score_batch_size=4)


def generate(out: Path, seed: int) -> Path:
    run(GenerationRequest(task="demo", model=NOISE, seed=seed, images_per_sample=2), out, OPTIONS, score=False)
    return out


def score(run_dir: Path, backbones: Backbones, decode_workers: int | None = None) -> list[dict]:
    manifest = rf.read_json(run_dir / rf.MANIFEST)
    task = task_from_manifest(manifest)
    samples = load_samples(task, None)
    backbones.load(["clip", "dino", "lpips"])
    ips = manifest["images_per_sample"]
    digests = sample_digests(samples)
    return score_images(run_dir, task, samples, digests, ips, backbones, OPTIONS, decode_workers=decode_workers)


def per_image_scores(run_dir: Path, lines: list[dict]) -> list[dict[str, float]]:
    """Every metric on each output alone (its references opened by the metric): no chunks, no workers, no cache."""
    task = task_from_manifest(rf.read_json(run_dir / rf.MANIFEST))
    samples = {sample.id: sample for sample in load_samples(task, None)}
    metrics = build_metrics(task, Backbones.smoke())
    expected = []
    for line in lines:
        output, sample = ImageRef(path=run_dir / line["image"]).open(), samples[line["sample_id"]]
        values = {column: metric.score([output], [sample])[0] for column, metric in metrics.items()}
        expected.append({column: value for column, value in values.items() if not isinstance(value, Excluded)})
    return expected


def test_fast_path_scores_equal_the_per_image_computation(tmp_path: Path) -> None:
    run_dir = generate(tmp_path / "run", seed=0)
    lines = score(run_dir, Backbones.smoke(), decode_workers=2)
    assert len(lines) == 12
    for line, expected in zip(lines, per_image_scores(run_dir, lines), strict=True):
        assert set(line["scores"]) == set(expected)
        for column, value in expected.items():
            assert line["scores"][column] == pytest.approx(value, abs=1e-6), (line["sample_id"], column)


def test_second_model_on_the_same_task_encodes_only_its_new_images(tmp_path: Path) -> None:
    first_run, second_run = generate(tmp_path / "a", seed=0), generate(tmp_path / "b", seed=1)
    cache = EmbeddingCache(tmp_path / "cache")
    first = Backbones.smoke()
    first.use_embedding_cache(cache)
    score(first_run, first)
    second = Backbones.smoke()  # a new process: nothing in memory, the same disk cache
    second.use_embedding_cache(cache)
    score(second_run, second)
    outputs = 12  # 6 samples x 2 images, each through CLIP once although clip_i, clip_t and clip_dir all use it
    assert second.features.encoded == {"clip": outputs, "dino": outputs}
    # The first run also encoded the references, each distinct picture once: DINO the 5 distinct targets (two
    # samples share "a red circle on white"), CLIP those and the 6 sources, one of which equals its target.
    assert first.features.encoded == {"clip": outputs + 10, "dino": outputs + 5}


def test_rescoring_an_interrupted_run_with_a_warm_cache_keeps_numbers_within_tolerance(tmp_path: Path) -> None:
    run_dir = generate(tmp_path / "run", seed=0)
    cache = EmbeddingCache(tmp_path / "cache")
    cold = Backbones.smoke()
    cold.use_embedding_cache(cache)
    cold_lines = score(run_dir, cold)
    (run_dir / rf.SCORES).unlink()
    warm = Backbones.smoke()
    warm.use_embedding_cache(cache)
    warm_lines = score(run_dir, warm, decode_workers=1)
    for cold_line, warm_line in zip(cold_lines, warm_lines, strict=True):
        assert warm_line["scores"] == pytest.approx(cold_line["scores"], abs=1e-6)


@pytest.mark.parametrize("backbone", ["clip", "dino"])
def test_a_feature_does_not_depend_on_the_images_batched_with_it(backbone: str) -> None:
    encoder = getattr(Backbones.smoke(), backbone)
    images = [noise_image(seed, 70, 90) for seed in range(9)]
    alone = encoder.encode_images(images[:1])
    in_batch = encoder.encode_images([*images[1:5], images[0], *images[5:]])
    assert torch.equal(in_batch[4], alone[0])  # bit for bit: caching and resuming can never move a score
