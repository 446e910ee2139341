"""The ``mige`` model on the bundled demo task, with a tiny random MIGE pipeline saved to disk like converted weights.

The pipeline comes from the shared test builder ``tests/support/mige_tiny.py`` and is loaded back through the
adapter's own ``from_pretrained`` path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mige_tiny import tiny_pipeline
from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.models.mige import MIGEGenerator, mige_request
from mige_bench.runner import ExecutionOptions, GenerationRequest, load_samples, run
from mige_bench.sample import ModelInputs, Sample
from mige_bench.task import get_task

STEPS = "3"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A converted-pipeline folder of a tiny random MIGE (64x64 outputs)."""
    folder = tmp_path_factory.mktemp("mige_weights")
    tiny_pipeline(seed=0).save_pretrained(folder)
    return folder


def _run(weights: Path, out: Path, batch_size: int, **model_args: str):
    request = GenerationRequest(
        task="demo", model="mige", model_args={"weights": str(weights), "steps": STEPS, **model_args}
    )
    return run(request, out, ExecutionOptions(batch_size=batch_size, progress=False), score=False)


def _images(run_dir: Path) -> dict[str, np.ndarray]:
    return {path.stem: np.asarray(Image.open(path)).astype(int) for path in sorted((run_dir / "images").glob("*.png"))}


def test_demo_task_generates_every_image_deterministically_and_independent_of_batch_size(
    tiny_weights: Path, tmp_path: Path
) -> None:
    outcome = _run(tiny_weights, tmp_path / "bs4", batch_size=4)
    assert outcome.failures == []
    first = _images(tmp_path / "bs4")
    assert len(first) == 6
    assert {image.shape for image in first.values()} == {(64, 64, 3)}
    assert len({image.tobytes() for image in first.values()}) == 6  # different prompts, sources and seeds

    again = _images(_run(tiny_weights, tmp_path / "again", batch_size=4).run_dir)
    assert all((again[name] == first[name]).all() for name in first)

    # Batched and single DiT calls differ only by float reordering: at most one 8-bit level on rare pixels.
    single = _images(_run(tiny_weights, tmp_path / "bs1", batch_size=1).run_dir)
    for name in first:
        difference = np.abs(single[name] - first[name])
        assert difference.max() <= 1 and difference.mean() < 0.01, name


def test_manifest_records_mige_settings(tiny_weights: Path, tmp_path: Path) -> None:
    outcome = _run(tiny_weights, tmp_path / "run", batch_size=6, guidance="3.5")
    settings = json.loads((outcome.run_dir / "manifest.json").read_text())["model"]["settings"]
    assert settings["overrides"] == {"num_inference_steps": 3, "guidance_scale": 3.5}
    assert settings["dtype"] == "fp32" and settings["noise"] == "per_image"
    assert settings["task_defaults"]["edit"]["steps"] == 60


def _sample(kind: str, **inputs) -> Sample:
    return Sample(id="s0", kind=kind, inputs=ModelInputs(**inputs))


def test_samples_of_each_kind_become_mige_instructions() -> None:
    red = ImageRef.from_pil(Image.new("RGB", (20, 10), "red"), label="red")
    blue = ImageRef.from_pil(Image.new("RGB", (10, 20), "blue"), label="blue")
    subject = mige_request(
        _sample(
            "subject",
            prompt="a dog in the jungle",
            multimodal_prompt="a<imagehere>in the jungle",
            subject_images=(red,),
            placeholder_images=(red,),
        )
    )
    assert subject["prompt"] == "a<imagehere>in the jungle" and subject["source"] is None
    assert [image.size for image in subject["references"]] == [(20, 10)]
    edit = mige_request(_sample("edit", prompt="make it night", source_image=blue, edit_type="global"))
    assert (edit["prompt"], edit["edit_task"], edit["source"].size, edit["references"]) == (
        "make it night", "global", (10, 20), []
    )  # fmt: skip
    subject_edit = mige_request(
        _sample(
            "subject_edit",
            prompt="add a cup",
            source_image=blue,
            multimodal_prompt="add<imagehere>to<imagehere>",
            placeholder_images=(red, blue),
        )
    )
    assert [image.size for image in subject_edit["references"]] == [(20, 10), (10, 20)]
    assert subject_edit["source"].size == (10, 20)
    with pytest.raises(MigeBenchError, match="dreambench_mige"):
        mige_request(_sample("subject", prompt="a dog", subject_images=(red,)))


def test_missing_weights_name_the_release_files_and_the_convert_command(tmp_path: Path) -> None:
    for weights in (str(tmp_path / "absent"), "EurekaTian/MIGE"):
        with pytest.raises(MigeBenchError) as error:
            MIGEGenerator(weights=weights)
        message = str(error.value)
        for expected in ("EurekaTian/MIGE", "model.pth", "t5-v1_1-xxl", "sd-vae-ft-ema", "mige-bench convert-mige"):
            assert expected in message
        # One --include per pattern: `hf download` reads further bare words as file names and then drops --include.
        assert (
            "`hf download EurekaTian/MIGE --include model.pth --include 't5-v1_1-xxl/*.json' --include "
            "t5-v1_1-xxl/spiece.model --include bert-base-uncased/config.json --include 'sd-vae-ft-ema/*' "
            "--local-dir mige_release`" in message
        )


def test_bad_model_arguments_are_refused(tiny_weights: Path) -> None:
    with pytest.raises(MigeBenchError, match="noise="):
        MIGEGenerator(weights=str(tiny_weights), noise="shared")
    with pytest.raises(MigeBenchError, match="steps="):
        MIGEGenerator(weights=str(tiny_weights), steps="many")
    with pytest.raises(MigeBenchError, match="dtype='fp16' is not one of bf16, fp32"):
        MIGEGenerator(weights=str(tiny_weights), dtype="fp16")


def test_original_noise_replays_the_scripts_streams_once_and_continues_them(
    tiny_weights: Path, tmp_path: Path, monkeypatch
) -> None:
    from reference_model import original_rng

    # A short stand-in for the 1.9e10-draw constructor replay (tests/reference_model/test_original_rng.py runs it).
    monkeypatch.setattr(original_rng, "CONSTRUCTOR_RNG_OUTPUTS", 4_096)
    samples = load_samples(get_task("demo"), None)
    seeds = list(range(len(samples)))

    def generate(*batches: slice, seed_offset: int = 0) -> list[np.ndarray]:
        generator = MIGEGenerator(weights=str(tiny_weights), steps=STEPS, noise="original")
        images = []
        for batch in batches:
            images += generator.generate(samples[batch], [seed + seed_offset for seed in seeds[batch]])
        return [np.asarray(image).astype(int) for image in images]

    whole = generate(slice(None))
    # The runner's per-image seeds play no part: the streams start from the scripts' seed 0.
    assert all((a == b).all() for a, b in zip(whole, generate(slice(None), seed_offset=100), strict=True))
    # A second call continues both streams (on CPU that equals one call, up to batch float reordering) ...
    split = generate(slice(0, 3), slice(3, None))
    assert max(np.abs(a - b).max() for a, b in zip(whole, split, strict=True)) <= 1
    # ... whereas the same samples first in a fresh process get the streams' first draws.
    tail = generate(slice(3, None))
    assert all(np.abs(a - b).mean() > 1 for a, b in zip(whole[3:], tail, strict=True))
    # And the replay length matters: it is what positions the posterior stream.
    monkeypatch.setattr(original_rng, "CONSTRUCTOR_RNG_OUTPUTS", 8_192)
    assert all(np.abs(a - b).mean() > 1 for a, b in zip(whole, generate(slice(None)), strict=True))

    outcome = _run(tiny_weights, tmp_path / "original", batch_size=2, noise="original")
    settings = json.loads((outcome.run_dir / "manifest.json").read_text())["model"]["settings"]
    assert settings["noise"] == "original" and "constructor RNG replayed" in settings["seeding"]
