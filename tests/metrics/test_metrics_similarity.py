"""DINO, CLIP-I, CLIP-T and CLIP-dir: bindings, exclusions, counters, and values against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.metrics import METRICS
from mige_bench.metrics.backbones import Backbones
from mige_bench.metrics.base import Excluded, Metric
from mige_bench.metrics.similarity import (
    IDENTICAL_CAPTIONS,
    ClipDirectionalSimilarity,
    ClipImageSimilarity,
    ClipTextSimilarity,
    DinoSimilarity,
)
from mige_bench.registry import resolve
from tests.metrics.builders import make_sample, noise_image, ref


def unit(rows: torch.Tensor) -> np.ndarray:
    array = rows.double().numpy()
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_every_registered_metric_resolves_to_its_class() -> None:
    assert set(METRICS) == {"dino", "clip_i", "clip_t", "clip_dir", "l1", "l2", "lpips"}
    for metric_id in METRICS:
        cls = resolve("metric", metric_id, METRICS)
        assert issubclass(cls, Metric)
        assert cls.name == metric_id
        assert set(cls.backbones_used) <= {"clip", "dino", "lpips"}


@pytest.mark.parametrize("metric_class", [DinoSimilarity, ClipImageSimilarity])
def test_identical_images_score_one(smoke_backbones: Backbones, metric_class: type) -> None:
    image = noise_image(1, 80, 60)
    metric = metric_class(smoke_backbones, against="target_image")
    [score] = metric.score([image], [make_sample("s0", {"target_image": ref(image)})])
    assert score == pytest.approx(1.0, abs=1e-6)


def test_clip_i_is_the_cosine_of_the_model_embeddings(smoke_backbones: Backbones) -> None:
    outputs = [noise_image(2), noise_image(3, 90, 70)]
    targets = [noise_image(4), noise_image(5, 70, 90)]
    samples = [make_sample(f"s{i}", {"target_image": ref(target)}) for i, target in enumerate(targets)]
    scores = ClipImageSimilarity(smoke_backbones, against="target_image").score(outputs, samples)
    model = smoke_backbones.clip.model
    preprocessing = smoke_backbones.clip.preprocessing
    with torch.no_grad():
        out = model.get_image_features(pixel_values=preprocessing(outputs, "hf")).pooler_output
        tgt = model.get_image_features(pixel_values=preprocessing(targets, "hf")).pooler_output
    np.testing.assert_allclose(scores, np.sum(unit(out) * unit(tgt), axis=1), atol=1e-6)


def test_several_references_score_the_mean_of_per_reference_cosines(smoke_backbones: Backbones) -> None:
    output = noise_image(6)
    references = [noise_image(7), noise_image(8), noise_image(9)]
    metric = DinoSimilarity(smoke_backbones, against="reference_images")
    [score] = metric.score([output], [make_sample("s0", {"reference_images": tuple(ref(r) for r in references)})])
    features = smoke_backbones.dino.encode_images([output, *references]).double().numpy()
    assert score == pytest.approx(np.mean(features[1:] @ features[0]), abs=1e-6)


def test_crop_rounding_changes_clip_i_on_an_odd_margin(smoke_backbones: Backbones) -> None:
    output, target = noise_image(10, 227, 224), noise_image(11, 227, 224)
    sample = make_sample("s0", {"target_image": ref(target)})
    hf = ClipImageSimilarity(smoke_backbones, against="target_image", crop_rounding="hf").score([output], [sample])
    tv = ClipImageSimilarity(smoke_backbones, against="target_image", crop_rounding="torchvision")
    assert abs(hf[0] - tv.score([output], [sample])[0]) > 1e-4


def test_mask_crop_compares_the_masked_output_region_with_the_entity(smoke_backbones: Backbones) -> None:
    entity = noise_image(12, 20, 10)
    output = np.zeros((48, 64, 3), dtype=np.uint8)
    output[30:40, 5:25] = np.asarray(entity)
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[30:40, 5:25] = 255
    sample = make_sample("s0", {"entity": ref(entity), "mask": ref(Image.fromarray(mask))})
    [score] = DinoSimilarity(smoke_backbones, against="entity", region="mask_crop").score(
        [Image.fromarray(output)], [sample]
    )
    assert score == pytest.approx(1.0, abs=1e-6)


def test_clip_t_counts_outputs_scored_against_a_truncated_caption(smoke_backbones: Backbones) -> None:
    captions = ["a" * 75, "a" * 76, "b" * 300, "a dog"]  # smoke tokenizer: one token per character
    samples = [make_sample(f"s{i}", {"caption": caption}) for i, caption in enumerate(captions)]
    metric = ClipTextSimilarity(smoke_backbones, caption="caption")
    scores = metric.score([noise_image(i) for i in range(4)], samples)
    assert metric.counters["outputs_with_truncated_caption"] == 2
    assert all(isinstance(score, float) and -1 <= score <= 1 for score in scores)
    metric.score([noise_image(0), noise_image(1)], samples[2:3] * 2)  # two images of one over-long caption
    assert metric.counters["outputs_with_truncated_caption"] == 4


def test_clip_t_is_the_raw_cosine_of_image_and_text_embeddings(smoke_backbones: Backbones) -> None:
    image = noise_image(13)
    [score] = ClipTextSimilarity(smoke_backbones, caption="caption").score(
        [image], [make_sample("s0", {"caption": "a red car"})]
    )
    model, tokenizer = smoke_backbones.clip.model, smoke_backbones.clip.tokenizer
    with torch.no_grad():
        image_features = model.get_image_features(
            pixel_values=smoke_backbones.clip.preprocessing([image], "hf")
        ).pooler_output
        text_features = model.get_text_features(**tokenizer(["a red car"], return_tensors="pt")).pooler_output
    assert score == pytest.approx(float(np.sum(unit(image_features) * unit(text_features))), abs=1e-6)


def test_clip_t_excludes_rows_with_identical_captions(smoke_backbones: Backbones) -> None:
    pairs = [("a cat", "a dog"), ("a cat", "a cat"), ("a hat", "a hat"), ("x", "y")]
    samples = [
        make_sample(f"s{i}", {"output_caption": out, "input_caption": inp}) for i, (inp, out) in enumerate(pairs)
    ]
    metric = ClipTextSimilarity(smoke_backbones, caption="output_caption", exclude_if_equal="input_caption")
    scores = metric.score([noise_image(i) for i in range(4)], samples)
    assert [isinstance(score, Excluded) for score in scores] == [False, True, True, False]
    assert scores[1] == Excluded(IDENTICAL_CAPTIONS)


def test_clip_dir_excludes_identical_captions_and_matches_the_formula(smoke_backbones: Backbones) -> None:
    sources = [noise_image(20), noise_image(21), noise_image(22)]
    outputs = [noise_image(30), noise_image(31), sources[2]]
    captions = [("a cat", "a dog on a sofa"), ("same", "same"), ("a tree", "a tree in snow")]
    samples = [
        make_sample(f"s{i}", {"source_image": ref(source), "input_caption": inp, "output_caption": out})
        for i, (source, (inp, out)) in enumerate(zip(sources, captions, strict=True))
    ]
    metric = ClipDirectionalSimilarity(
        smoke_backbones, caption="output_caption", source_caption="input_caption", source_image="source_image"
    )
    scores = metric.score(outputs, samples)
    assert sum(isinstance(score, Excluded) for score in scores) == 1
    assert scores[1] == Excluded(IDENTICAL_CAPTIONS)
    assert scores[2] == 0.0  # an unchanged image has no direction

    clip = smoke_backbones.clip
    image_out, image_src = clip.encode_images(outputs[:1]), clip.encode_images(sources[:1])
    text_out, text_src = clip.encode_texts(["a dog on a sofa"]).features, clip.encode_texts(["a cat"]).features
    image_direction = unit(image_out) - unit(image_src)
    text_direction = unit(text_out) - unit(text_src)
    expected = np.sum(image_direction * text_direction) / (
        np.linalg.norm(image_direction) * np.linalg.norm(text_direction)
    )
    assert scores[0] == pytest.approx(expected, abs=1e-6)


def test_a_missing_references_key_names_the_sample_and_key(smoke_backbones: Backbones) -> None:
    sample = make_sample("emu_0042", {"output_caption": "a dog"})
    with pytest.raises(MigeBenchError, match=r"emu_0042.*'target_image'"):
        ClipImageSimilarity(smoke_backbones, against="target_image").score([noise_image(1)], [sample])
    with pytest.raises(MigeBenchError, match=r"emu_0042.*'input_caption'"):
        ClipTextSimilarity(smoke_backbones, caption="output_caption", exclude_if_equal="input_caption").score(
            [noise_image(1)], [sample]
        )


def test_a_caption_key_bound_as_an_image_is_a_clear_error(smoke_backbones: Backbones) -> None:
    sample = make_sample("s0", {"output_caption": "a dog"})
    with pytest.raises(MigeBenchError, match="bind an image key"):
        DinoSimilarity(smoke_backbones, against="output_caption").score([noise_image(1)], [sample])


def test_bad_bindings_are_refused(smoke_backbones: Backbones) -> None:
    with pytest.raises(TypeError):
        DinoSimilarity(smoke_backbones, against="target_image", agaisnt="x")
    with pytest.raises(TypeError):
        ClipTextSimilarity(smoke_backbones, caption="c", region="full")
    with pytest.raises(MigeBenchError, match="region 'masked'"):
        DinoSimilarity(smoke_backbones, against="target_image", region="masked")
    with pytest.raises(MigeBenchError, match="crop_rounding 'floor'"):
        ClipTextSimilarity(smoke_backbones, caption="c", crop_rounding="floor")
