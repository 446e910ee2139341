"""The on-disk reference-embedding cache: hits, misses, invalidation by key, damage and concurrent writers."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from mige_bench.images import ImageRef
from mige_bench.metrics.backbones import Backbones, LoadedBackbone, load, resolve, state_dict_sha256
from mige_bench.metrics.embedding_cache import CachedEmbedding, EmbeddingCache
from mige_bench.metrics.encoders import ImagePreprocessing
from mige_bench.metrics.similarity import ClipImageSimilarity, DinoSimilarity
from tests.metrics.builders import make_sample, noise_image, ref

DIGEST = bytes(range(32))


def entry(seed: int, size: int = 16) -> CachedEmbedding:
    return CachedEmbedding(np.random.default_rng(seed).standard_normal(size).astype(np.float32), DIGEST)


def fresh_backbones(root: Path) -> Backbones:
    """What a new scoring process sees: no feature in memory, the disk cache under ``root`` (encoders are shared)."""
    backbones = Backbones.smoke()
    backbones.use_embedding_cache(EmbeddingCache(root))
    return backbones


def score_dino(backbones: Backbones, outputs: list, targets: list[ImageRef]) -> list:
    samples = [make_sample(f"s{i}", {"target_image": target}) for i, target in enumerate(targets)]
    return DinoSimilarity(backbones, against="target_image").score(outputs, samples)


def test_an_entry_reads_back_exactly_and_an_absent_key_is_a_miss(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    stored = entry(0)
    cache.put("ab" * 32, stored)
    loaded = cache.get("ab" * 32)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.feature, stored.feature)
    assert loaded.feature.dtype == np.float32 and loaded.pixels_sha256 == DIGEST
    assert cache.get("cd" * 32) is None


def test_keys_differ_when_image_backbone_or_preprocessing_differ() -> None:
    base = EmbeddingCache.entry_key("image", "backbone", "preprocessing")
    assert base == EmbeddingCache.entry_key("image", "backbone", "preprocessing")
    assert base != EmbeddingCache.entry_key("other image", "backbone", "preprocessing")
    assert base != EmbeddingCache.entry_key("image", "other backbone", "preprocessing")
    assert base != EmbeddingCache.entry_key("image", "backbone", "other preprocessing")


def test_second_scoring_process_reads_references_from_disk_with_equal_scores(tmp_path: Path) -> None:
    outputs = [noise_image(1), noise_image(2)]
    targets = [ref(noise_image(3)), ref(noise_image(4))]
    first = fresh_backbones(tmp_path)
    cold = score_dino(first, outputs, targets)
    assert first.features.encoded["dino"] == 4
    second = fresh_backbones(tmp_path)
    score_dino(second, [noise_image(5), noise_image(6)], targets)
    assert second.features.encoded["dino"] == 2  # the new outputs only
    again = fresh_backbones(tmp_path)
    np.testing.assert_allclose(score_dino(again, outputs, targets), cold, atol=1e-6)
    assert again.features.encoded["dino"] == 2


def test_smoke_backbones_keep_no_disk_cache_unless_given_one(tmp_path: Path) -> None:
    assert Backbones.smoke().features.cache is None
    assert Backbones(home=tmp_path).features.cache.root == tmp_path / "cache" / "embeddings"


def test_changed_crop_rounding_is_a_miss(tmp_path: Path) -> None:
    samples = [make_sample("s0", {"target_image": ref(noise_image(7, 227, 224))})]
    output = noise_image(8, 227, 224)
    for rounding, expected_encodes in (("hf", 2), ("hf", 1), ("torchvision", 2)):
        backbones = fresh_backbones(tmp_path)
        ClipImageSimilarity(backbones, against="target_image", crop_rounding=rounding).score([output], samples)
        assert backbones.features.encoded["clip"] == expected_encodes, rounding


def test_changed_preprocessing_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs, targets = [noise_image(9)], [ref(noise_image(10))]
    score_dino(fresh_backbones(tmp_path), outputs, targets)
    backbones = fresh_backbones(tmp_path)
    pinned = backbones.dino.preprocessing
    monkeypatch.setattr(backbones.dino, "preprocessing", ImagePreprocessing(240, pinned.crop, pinned.mean, pinned.std))
    score_dino(backbones, outputs, targets)
    assert backbones.features.encoded["dino"] == 2  # the reference was encoded again


def test_changed_weights_are_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs, targets = [noise_image(11)], [ref(noise_image(12))]
    score_dino(fresh_backbones(tmp_path), outputs, targets)
    backbones = fresh_backbones(tmp_path)
    monkeypatch.setattr(backbones, "embedding_identity", lambda name: "identity of retrained weights")
    score_dino(backbones, outputs, targets)
    assert backbones.features.encoded["dino"] == 2


def test_backbone_identity_follows_the_weights_not_their_location() -> None:
    source = resolve("dino", "smoke", Path("/nonexistent"))
    first, second = load(source, "cpu"), load(source, "cpu")
    assert first.identity() == second.identity()
    moved = LoadedBackbone(first.encoder, {**first.provenance, "spec": "/elsewhere", "resolved_path": "/elsewhere"})
    assert moved.identity() == first.identity()
    with_new_weights = load(source, "cpu")
    parameter = next(with_new_weights.encoder.model.parameters())
    parameter.data += 1e-3
    with_new_weights.provenance["weight_sha256"] = state_dict_sha256(with_new_weights.encoder.model)
    assert with_new_weights.identity() != first.identity()


def test_damaged_entry_is_a_miss_and_is_rewritten(tmp_path: Path) -> None:
    outputs, targets = [noise_image(13)], [ref(noise_image(14))]
    cold = score_dino(fresh_backbones(tmp_path), outputs, targets)
    [entry_file] = tmp_path.rglob("*.emb")
    data = bytearray(entry_file.read_bytes())
    data[-1] ^= 0xFF
    entry_file.write_bytes(bytes(data))
    backbones = fresh_backbones(tmp_path)
    np.testing.assert_allclose(score_dino(backbones, outputs, targets), cold, atol=1e-6)
    assert backbones.features.encoded["dino"] == 2
    assert EmbeddingCache(tmp_path).get(entry_file.stem) is not None


def test_unwritable_cache_scores_without_it(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    [score] = score_dino(fresh_backbones(blocked / "cache"), [noise_image(15)], [ref(noise_image(15))])
    assert score == pytest.approx(1.0, abs=1e-6)


def _write_many(root: str, worker: int) -> None:
    cache = EmbeddingCache(Path(root))
    for round_ in range(20):
        for key_number in range(10):  # every worker writes the same keys with the same values
            cache.put(f"{key_number:064x}", entry(key_number, size=512))
        cache.put(f"{1000 + worker * 100 + round_:064x}", entry(worker, size=512))


def test_concurrent_writers_leave_only_complete_entries(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    processes = [context.Process(target=_write_many, args=(str(tmp_path), worker)) for worker in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    cache = EmbeddingCache(tmp_path)
    for key_number in range(10):
        loaded = cache.get(f"{key_number:064x}")
        assert loaded is not None
        np.testing.assert_array_equal(loaded.feature, entry(key_number, size=512).feature)
    assert len(list(tmp_path.rglob("*.emb"))) == 10 + 4 * 20
    assert not list(tmp_path.rglob("*.tmp"))
