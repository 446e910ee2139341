"""Per-sample data digests: what they are sensitive to, what they ignore, and that shared images are read once."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.sample import ModelInputs, Sample, sample_digests


def _png(tmp_path, name: str, grey: int):
    path = tmp_path / name
    Image.new("RGB", (16, 16), (grey,) * 3).save(path)
    return path


def _subject_sample(sample_id: str, reference: ImageRef, prompt: str = "a dog on the beach") -> Sample:
    return Sample(
        id=sample_id,
        kind="subject",
        inputs=ModelInputs(prompt=prompt, subject_images=(reference,)),
        references={"reference_images": (reference,), "prompt": prompt},
        metadata={"subject": "dog"},
    )


def test_the_digest_is_the_sha256_of_the_canonical_record_with_images_by_content(tmp_path):
    path = _png(tmp_path, "dog.png", 100)
    sample = _subject_sample("dog_0", ImageRef(path=path))
    image = {"image_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    record = {
        "kind": "subject",
        "inputs": {
            "prompt": "a dog on the beach",
            "source_image": None,
            "subject_images": [image],
            "multimodal_prompt": None,
            "placeholder_images": [],
            "edit_type": None,
            "subject_category": None,
        },
        "references": {"reference_images": [image], "prompt": "a dog on the beach"},
        "metadata": {"subject": "dog"},
        "chain_from": None,
        "scored": True,
    }
    expected = hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert sample_digests([sample]) == {"dog_0": expected}


def test_same_content_elsewhere_gives_the_same_digest_and_any_change_another(tmp_path):
    original = _png(tmp_path, "a.png", 100)
    copied = tmp_path / "copy" / "renamed.png"
    copied.parent.mkdir()
    copied.write_bytes(original.read_bytes())
    in_memory = ImageRef(data=original.read_bytes(), label="row 3 image")
    base = sample_digests([_subject_sample("s", ImageRef(path=original))])["s"]
    assert sample_digests([_subject_sample("s", ImageRef(path=copied))])["s"] == base
    assert sample_digests([_subject_sample("s", in_memory)])["s"] == base

    changed = {
        "image": _subject_sample("s", ImageRef(path=_png(tmp_path, "b.png", 101))),
        "prompt": _subject_sample("s", ImageRef(path=original), prompt="a dog on the sand"),
        "metadata": dataclasses.replace(_subject_sample("s", ImageRef(path=original)), metadata={"subject": "cat"}),
        "scored": dataclasses.replace(_subject_sample("s", ImageRef(path=original)), scored=False),
    }
    digests = {what: sample_digests([sample])["s"] for what, sample in changed.items()}
    assert base not in digests.values()
    assert len(set(digests.values())) == len(digests)


def test_an_image_shared_by_many_samples_is_read_once(tmp_path, monkeypatch):
    reference = ImageRef(path=_png(tmp_path, "dog.png", 100))
    reads = []
    real = ImageRef.content_hash
    monkeypatch.setattr(ImageRef, "content_hash", lambda self: reads.append(self) or real(self))
    digests = sample_digests([_subject_sample(f"dog_{i}", reference, prompt=f"a dog, take {i}") for i in range(25)])
    assert len(reads) == 1
    assert len(set(digests.values())) == 25  # the prompts differ


def test_a_missing_dataset_image_is_named(tmp_path):
    with pytest.raises(MigeBenchError, match=r"gone\.png: image file not found"):
        sample_digests([_subject_sample("s", ImageRef(path=tmp_path / "gone.png"))])
