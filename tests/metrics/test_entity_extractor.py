"""MIGE's GroundingDINO + SAM entity extractor (``region: detected_entity``): box choice, thresholds, geometry, the
not-detected fallback and its counter, with tiny random models saved to folders and loaded by the real code path."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.metrics import entity_extractor
from mige_bench.metrics.backbones import Backbones
from mige_bench.metrics.entity_extractor import (
    NOT_DETECTED,
    Detection,
    EntityExtractor,
    cut_out,
    load_extractor,
    pixel_box,
)
from mige_bench.metrics.pixel import L1Distance
from mige_bench.metrics.similarity import ClipImageSimilarity, DinoSimilarity
from mige_bench.sample import ModelInputs, Sample
from tests.metrics.builders import noise_image, ref
from tests.tasks.dataset_miniatures import build_migebench_root, bundled_task

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "pen", "signboard"]


# --------------------------------------------------------------------------------------------------------------------
# Tiny random models, saved with save_pretrained
# --------------------------------------------------------------------------------------------------------------------


def save_tiny_grounding_dino(folder: Path) -> Path:
    """GroundingDINO with a 4-stage Swin of width 8, a 1-layer BERT of width 32 and 8 queries (~150k parameters)."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    swin = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    bert = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        num_queries=8,
        encoder_layers=1,
        decoder_layers=2,  # transformers ties the box heads of decoder layers 1.. to layer 0: at least 2 are needed
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=32,  # GroupNorm(32, d_model) in the input projections
        num_feature_levels=3,
        encoder_n_points=1,
        decoder_n_points=1,
        max_text_len=32,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    # A cased tokenizer, so that the tests see whether the query is lower-cased by the extractor itself.
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=False)
    GroundingDinoProcessor(image_processor, tokenizer).save_pretrained(folder)
    return folder


def save_tiny_sam(folder: Path) -> Path:
    """SAM on 64-pixel inputs: a 2-layer ViT of width 16 with 8-pixel patches, prompt encoder and mask decoder."""
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(
        hidden_size=16,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        window_size=4,
        global_attn_indexes=[1],
        mlp_dim=32,
        num_pos_feats=8,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16)
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    torch.manual_seed(0)
    SamModel(config).save_pretrained(folder)
    image_processor = SamImageProcessor(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    SamProcessor(image_processor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("entity_weights")
    return {
        "detector": str(save_tiny_grounding_dino(root / "grounding_dino")),
        "segmenter": str(save_tiny_sam(root / "sam")),
    }


@pytest.fixture(autouse=True)
def _fresh_extractors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test loads its own extractor, so remembered extractions never leak between tests."""
    monkeypatch.setattr(entity_extractor, "_LOADED", {})


@pytest.fixture
def extractor(weights: dict[str, str], smoke_backbones: Backbones) -> EntityExtractor:
    return load_extractor(weights["detector"], weights["segmenter"], smoke_backbones)


def migebench_like(sample_id: str, entity: Image.Image, query: str | None = "pen") -> Sample:
    metadata = {} if query is None else {"object": query}
    return Sample(
        id=sample_id,
        kind="subject_edit",
        inputs=ModelInputs(prompt="add it"),
        references={"entity": ref(entity)},
        metadata=metadata,
    )


def logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


def fake_detector(probabilities: list[dict[int, float]], boxes: list[tuple[float, float, float, float]]) -> Any:
    """A stand-in for GroundingDINO's forward: query ``q`` gives token ``t`` probability ``probabilities[q][t]``
    (others ~0) and box ``boxes[q]`` (normalised centre x, centre y, width, height)."""

    def forward(**inputs: torch.Tensor) -> SimpleNamespace:
        logits = torch.full((1, len(boxes), inputs["input_ids"].shape[1]), -20.0)
        for query, tokens in enumerate(probabilities):
            for token, probability in tokens.items():
                logits[0, query, token] = logit(probability)
        return SimpleNamespace(logits=logits, pred_boxes=torch.tensor([boxes]))

    return forward


# --------------------------------------------------------------------------------------------------------------------
# Detection: box choice and thresholds (real processor post-processing, controlled logits)
# --------------------------------------------------------------------------------------------------------------------

PEN = 1  # token position of "pen" in "[CLS] pen . [SEP]"
FULL_STOP = 2


def test_the_highest_scoring_box_above_the_box_threshold_is_chosen(
    extractor: EntityExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    probabilities = [{PEN: 0.31}, {PEN: 0.6, FULL_STOP: 0.2}, {PEN: 0.45}]
    boxes = [(0.5, 0.5, 0.2, 0.2), (0.25, 0.5, 0.5, 0.5), (0.75, 0.75, 0.1, 0.1)]
    monkeypatch.setattr(extractor, "detector", fake_detector(probabilities, boxes))
    detection = extractor.detect(noise_image(0, 40, 20), "Pen")
    assert detection is not None
    assert detection.box == pytest.approx((0.0, 5.0, 20.0, 15.0))  # (cx ± w/2) * 40, (cy ± h/2) * 20
    assert detection.score == pytest.approx(0.6)
    assert detection.phrase == "pen"  # the full stop, at 0.2, is below the text threshold


def test_boxes_at_or_below_the_box_threshold_are_not_detections(
    extractor: EntityExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    probabilities = [{PEN: 0.3}, {PEN: 0.29, FULL_STOP: 0.28}]
    monkeypatch.setattr(extractor, "detector", fake_detector(probabilities, [(0.5, 0.5, 0.2, 0.2)] * 2))
    image = noise_image(1, 40, 20)
    assert extractor.detect(image, "pen") is None
    assert extractor.extract(image, "pen") is None


def test_the_query_is_lower_cased_and_ends_with_a_full_stop(
    extractor: EntityExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[int]] = []

    def forward(**inputs: torch.Tensor) -> SimpleNamespace:
        seen.append(inputs["input_ids"][0].tolist())
        return fake_detector([{}], [(0.5, 0.5, 0.2, 0.2)])(**inputs)

    monkeypatch.setattr(extractor, "detector", forward)
    extractor.detect(noise_image(2, 40, 20), "  A Signboard ")
    assert seen == [[VOCAB.index(token) for token in ("[CLS]", "a", "signboard", ".", "[SEP]")]]


# --------------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------------


def test_cut_out_blackens_outside_the_mask_and_crops_to_the_box() -> None:
    image = noise_image(3, 12, 10)
    mask = np.zeros((10, 12), dtype=bool)
    mask[3:7, 4:9] = True
    mask[0, 0] = True  # outside the box: cropped away
    entity = cut_out(image, mask, (2, 2, 10, 8))
    expected = np.zeros((6, 8, 3), dtype=np.uint8)
    expected[1:5, 2:7] = np.asarray(image)[3:7, 4:9]
    assert entity.size == (8, 6)
    np.testing.assert_array_equal(np.asarray(entity), expected)


def test_detector_boxes_are_rounded_like_pil_and_clipped_to_the_image() -> None:
    assert pixel_box((2.4, 3.5, 10.6, 30.0), (12, 20)) == (2, 4, 11, 20)
    assert pixel_box((-5.2, -0.4, 3.2, 2.5), (12, 20)) == (0, 0, 3, 2)
    assert pixel_box((4.6, 1.0, 5.4, 9.0), (12, 20)) is None  # rounds to zero width
    assert pixel_box((13.0, 1.0, 15.0, 9.0), (12, 20)) is None  # entirely right of the image


def test_sam_segments_the_chosen_box_and_the_entity_is_cut_out_of_the_output(
    extractor: EntityExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = noise_image(4, 60, 40)
    detection = Detection((10.4, 5.6, 30.2, 25.5), 0.9, "pen")
    monkeypatch.setattr(extractor, "detect", lambda image, query: detection)
    prompts: list[list[float]] = []
    sam = extractor.segmenter

    def spy(**inputs: Any) -> Any:
        assert inputs["multimask_output"] is False  # one mask per box, as Grounded-SAM asks for
        prompts.append(inputs["input_boxes"][0, 0].tolist())
        return sam(**inputs)

    monkeypatch.setattr(extractor, "segmenter", spy)
    entity = extractor.extract(image, "pen")
    # SAM gets the detector's box, unrounded, in its input frame: 60 x 40 resized to 64 x 43.
    x0, y0, x1, y1 = detection.box
    assert prompts == [pytest.approx([x0 * 64 / 60, y0 * 43 / 40, x1 * 64 / 60, y1 * 43 / 40], abs=1e-4)]
    monkeypatch.setattr(extractor, "segmenter", sam)
    segment = extractor.segment
    mask = segment(image, detection.box)
    assert mask.shape == (40, 60) and mask.dtype == bool
    assert entity is not None and entity.size == (20, 20)  # x 10..30, y 6..26
    np.testing.assert_array_equal(np.asarray(entity), np.asarray(cut_out(image, mask, (10, 6, 30, 26))))


# --------------------------------------------------------------------------------------------------------------------
# The metric binding
# --------------------------------------------------------------------------------------------------------------------


def test_an_undetected_entity_scores_the_whole_output_and_is_counted(
    weights: dict[str, str], smoke_backbones: Backbones, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EntityExtractor, "detect", lambda self, image, query: None)
    output, entity = noise_image(5, 48, 40), noise_image(6, 20, 20)
    sample = migebench_like("s0", entity)
    metric = DinoSimilarity(smoke_backbones, against="entity", region="detected_entity", **weights)
    [score] = metric.score([output], [sample])
    [whole] = DinoSimilarity(smoke_backbones, against="entity").score([output], [sample])
    assert score == pytest.approx(whole, abs=1e-6)
    assert metric.counters == {NOT_DETECTED: 1}


def test_a_detected_entity_is_compared_with_the_reference_entity(
    weights: dict[str, str], smoke_backbones: Backbones, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, entity = noise_image(7, 48, 40), noise_image(8, 20, 20)
    mask = np.zeros((40, 48), dtype=bool)
    mask[10:30, 12:36] = True
    monkeypatch.setattr(EntityExtractor, "detect", lambda self, image, query: Detection((8, 6, 40, 34), 0.8, "pen"))
    monkeypatch.setattr(EntityExtractor, "segment", lambda self, image, box: mask)
    metric = ClipImageSimilarity(smoke_backbones, against="entity", region="detected_entity", **weights)
    [score] = metric.score([output], [migebench_like("s0", entity)])
    cut = cut_out(output, mask, (8, 6, 40, 34))
    [expected] = ClipImageSimilarity(smoke_backbones, against="entity").score([cut], [migebench_like("s0", entity)])
    assert score == pytest.approx(expected, abs=1e-6)
    assert score != pytest.approx(
        ClipImageSimilarity(smoke_backbones, against="entity").score([output], [migebench_like("s0", entity)])[0],
        abs=1e-4,
    )
    assert metric.counters[NOT_DETECTED] == 0


def test_the_second_entity_column_reuses_the_first_columns_detections(
    weights: dict[str, str], smoke_backbones: Backbones, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def detect(self: EntityExtractor, image: Image.Image, query: str) -> None:
        calls.append(query)

    monkeypatch.setattr(EntityExtractor, "detect", detect)
    outputs = [noise_image(9, 32, 32), noise_image(10, 32, 32)]
    samples = [migebench_like(f"s{k}", noise_image(11, 16, 16)) for k in range(2)]
    dino = DinoSimilarity(smoke_backbones, against="entity", region="detected_entity", **weights)
    clip_i = ClipImageSimilarity(smoke_backbones, against="entity", region="detected_entity", **weights)
    dino.score(outputs, samples)
    clip_i.score(outputs, samples)
    assert calls == ["pen", "pen"]
    assert dino.counters == clip_i.counters == {NOT_DETECTED: 2}  # each column reports its own failure count


def test_detected_entity_needs_the_samples_detector_query(weights: dict[str, str], smoke_backbones: Backbones) -> None:
    metric = DinoSimilarity(smoke_backbones, against="entity", region="detected_entity", **weights)
    with pytest.raises(MigeBenchError, match=r"sample s0: .*metadata key 'object'"):
        metric.score([noise_image(12)], [migebench_like("s0", noise_image(13), query=None)])


def test_missing_detector_weights_fail_at_binding_naming_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mige_bench.metrics.backbones._hub_snapshot", lambda repo_id, allow_download: None)
    backbones = Backbones(home=tmp_path)
    hub_id = "IDEA-Research/grounding-dino-base"
    with pytest.raises(MigeBenchError, match=rf"hf download {hub_id} --local-dir {tmp_path}/{hub_id}"):
        DinoSimilarity(backbones, against="entity", region="detected_entity")


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ({"region": "mask_crop", "detector": "some/detector"}, "apply only to region 'detected_entity'"),
        ({"region": "detected_entity", "detector": "no such folder"}, "neither an existing folder nor"),
        ({"region": "detected_entity", "segmenter": "smoke"}, "neither an existing folder nor"),
    ],
)
def test_bad_detector_bindings_are_refused(
    weights: dict[str, str], smoke_backbones: Backbones, binding: dict[str, str], message: str
) -> None:
    with pytest.raises(MigeBenchError, match=message):
        DinoSimilarity(smoke_backbones, against="entity", **{**weights, **binding})


def test_a_wrong_kind_of_model_is_refused(weights: dict[str, str], smoke_backbones: Backbones) -> None:
    swapped = {"detector": weights["segmenter"], "segmenter": weights["detector"]}
    with pytest.raises(MigeBenchError, match="holds a 'sam' model, not GroundingDINO"):
        load_extractor(swapped["detector"], swapped["segmenter"], smoke_backbones)


def test_pixel_metrics_refuse_detected_entity(smoke_backbones: Backbones) -> None:
    with pytest.raises(MigeBenchError, match="available for dino and clip_i only"):
        L1Distance(smoke_backbones, against="entity", region="detected_entity")


# --------------------------------------------------------------------------------------------------------------------
# End to end on a miniature MIGEBench copy, with the tiny models
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("box_threshold", "undetected"), [(0.0, 0), (1.0, 2)])
def test_migebench_entity_scores_run_end_to_end_with_detected_entity(
    tmp_path: Path,
    weights: dict[str, str],
    smoke_backbones: Backbones,
    monkeypatch: pytest.MonkeyPatch,
    box_threshold: float,
    undetected: int,
) -> None:
    from mige_bench.loaders.migebench import load_migebench

    # The random detector's scores are arbitrary; thresholds of 0 and 1 force "every box" and "no box".
    monkeypatch.setattr(entity_extractor, "BOX_THRESHOLD", box_threshold)
    samples = load_migebench(bundled_task("migebench_add.yaml"), build_migebench_root(tmp_path))
    outputs = [noise_image(20 + k, 64, 48) for k in range(len(samples))]
    metric = DinoSimilarity(smoke_backbones, against="entity_image", region="detected_entity", **weights)
    scores = metric.score(outputs, samples)
    assert len(scores) == 2 and all(isinstance(score, float) and -1 <= score <= 1 for score in scores)
    assert metric.counters[NOT_DETECTED] == undetected
    whole = DinoSimilarity(smoke_backbones, against="entity_image").score(outputs, samples)
    assert (np.abs(np.subtract(scores, whole)) < 1e-6).all() == bool(undetected)

    provenance = load_extractor(weights["detector"], weights["segmenter"], smoke_backbones).provenance
    weight_file = Path(weights["detector"]) / "model.safetensors"
    assert provenance["detector"]["weight_sha256"] == hashlib.sha256(weight_file.read_bytes()).hexdigest()
    assert (provenance["box_threshold"], provenance["text_threshold"]) == (box_threshold, 0.25)
    # The metric reports the same record, which the runner writes into results.json and the scoring key.
    assert metric.provenance() == {"entity_extractor": provenance}
    assert DinoSimilarity(smoke_backbones, against="entity_image").provenance() == {}
