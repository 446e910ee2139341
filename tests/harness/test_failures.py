"""The failure ledger: a sample is failed while a failures file records it and its images are missing, once."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import pytest
from PIL import Image

from mige_bench import run_folder as rf
from mige_bench.errors import MigeBenchError
from mige_bench.models.base import Generator
from mige_bench.runner import ExecutionOptions, GenerationRequest, current_failures, merge_runs, run, score_run
from mige_bench.sample import Sample

BROKEN: set[str] = set()
"""Sample ids the fixable model fails on; a test sets it (monkeypatch) to break and then fix the model."""
REASON = "CUDA out of memory"


class FixableGenerator(Generator):
    """Returns the source image, except for the samples in ``BROKEN``: a model bug that gets fixed between runs."""

    name = "fixable"

    def generate(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Image.Image]:
        this_module = sys.modules[__name__]
        if any(sample.id in this_module.BROKEN for sample in samples):
            raise RuntimeError(this_module.REASON)
        return [sample.inputs.source_image.open() for sample in samples]


REQUEST = GenerationRequest(task="demo", model=f"{__name__}:FixableGenerator")
# Demo samples per shard of two: 0 -> red_circle, square_to_circle, night_background; 1 -> the other three.
FAILING_IN_SHARD_0 = "square_to_circle"


def _options(shard: tuple[int, int] | None = None, allow_failures: int = 0) -> ExecutionOptions:
    return ExecutionOptions(progress=False, batch_size=6, shard=shard, allow_failures=allow_failures)


def _results(run_dir) -> dict:
    return json.loads((run_dir / rf.RESULTS).read_text())


@pytest.fixture
def broken(monkeypatch):
    """Breaks the model on one sample of shard 0; ``broken.fix()`` repairs it, ``broken.reason(text)`` changes why."""
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "BROKEN", {FAILING_IN_SHARD_0})
    monkeypatch.setattr(module, "REASON", REASON)

    class Control:
        @staticmethod
        def fix() -> None:
            monkeypatch.setattr(module, "BROKEN", set())

        @staticmethod
        def reason(text: str) -> None:
            monkeypatch.setattr(module, "REASON", text)

    return Control


@pytest.fixture(autouse=True)
def _no_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_a_shard_failure_ends_when_a_plain_resume_generates_the_image(tmp_path, broken):
    out = tmp_path / "run"
    run(REQUEST, out, _options((0, 2)))
    with pytest.raises(MigeBenchError, match=r"1 sample\(s\) failed"):
        run(REQUEST, out, _options((1, 2)))  # the last shard scores the run and reports the failure
    broken.fix()
    outcome = run(REQUEST, out, _options())  # a plain resume: regenerates the failed sample, exits cleanly
    assert outcome.failures == []
    assert outcome.results["counts"]["failed_samples"] == 0
    assert outcome.results["counts"]["scored_images"] == 6
    assert _results(out)["failures"] == {"count": 0, "reasons": {}}
    assert score_run(out, _options()).results["counts"]["failed_samples"] == 0  # re-scoring agrees


def test_a_sample_recorded_by_two_files_counts_once_with_its_latest_reason(tmp_path, broken):
    out = tmp_path / "run"
    run(REQUEST, out, _options((0, 2)), score=False)
    broken.reason("CUDA error: device-side assert triggered")
    outcome = run(REQUEST, out, _options(allow_failures=1))  # fails again, now recorded in failures.jsonl too
    assert len(rf.read_jsonl(out / "failures.shard-0-of-2.jsonl")) == 1
    assert len(rf.read_jsonl(out / rf.FAILURES)) == 1
    assert outcome.results["counts"]["failed_samples"] == 1
    assert outcome.results["failures"] == {
        "count": 1,
        "reasons": {"RuntimeError: CUDA error: device-side assert triggered": 1},
    }
    assert outcome.results["counts"]["scored_images"] == 5


def test_the_failure_message_names_the_files_that_record_the_failures(tmp_path, broken):
    out = tmp_path / "run"
    run(REQUEST, out, _options((0, 2)))
    with pytest.raises(MigeBenchError) as error:
        run(REQUEST, out, _options((1, 2)))
    assert f"see {out / 'failures.shard-0-of-2.jsonl'}): 1x RuntimeError: CUDA out of memory." in str(error.value)
    assert str(out / rf.FAILURES) not in str(error.value)  # no such file: shard 1 failed nothing


def test_merging_twice_into_the_same_folder_changes_nothing(tmp_path, broken):
    for index in range(2):
        run(REQUEST, tmp_path / f"part{index}", _options((index, 2)), score=False)
    merged = tmp_path / "merged"
    merge_runs([tmp_path / "part0", tmp_path / "part1"], merged)
    first = _results_of_scoring(merged)
    ledgers = _failure_files(merged)
    merge_runs([tmp_path / "part0", tmp_path / "part1"], merged)
    assert _failure_files(merged) == ledgers
    assert sum(len(rf.read_jsonl(merged / name)) for name in ledgers) == 1
    second = _results_of_scoring(merged)
    assert first["counts"]["failed_samples"] == second["counts"]["failed_samples"] == 1
    assert second["failures"] == {"count": 1, "reasons": {"RuntimeError: CUDA out of memory": 1}}
    assert second["metrics"] == first["metrics"]


def test_a_merged_failure_ends_when_another_source_has_the_images(tmp_path, broken):
    run(REQUEST, tmp_path / "part0_failed", _options((0, 2)), score=False)
    broken.fix()
    run(REQUEST, tmp_path / "part0_retried", _options((0, 2)), score=False)
    run(REQUEST, tmp_path / "part1", _options((1, 2)), score=False)
    merged = merge_runs([tmp_path / "part0_failed", tmp_path / "part0_retried", tmp_path / "part1"], tmp_path / "m")
    outcome = score_run(merged, _options())
    assert outcome.failures == []
    assert outcome.results["counts"]["failed_samples"] == 0
    assert outcome.results["counts"]["scored_images"] == 6


def test_current_failures_ignore_records_whose_images_exist(tmp_path):
    (tmp_path / rf.IMAGES).mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / rf.IMAGES / "a_0.png")
    Image.new("RGB", (8, 8), "red").save(tmp_path / rf.IMAGES / "a_1.png")
    Image.new("RGB", (8, 8), "red").save(tmp_path / rf.IMAGES / "b_0.png")  # b_1 missing: b is still failed
    rf.append_jsonl(tmp_path / "failures.shard-0-of-2.jsonl", [{"sample_id": "a", "reason": "old"}])
    rf.append_jsonl(tmp_path / "failures.shard-1-of-2.jsonl", [{"sample_id": "b", "reason": "old"}])
    rf.append_jsonl(
        tmp_path / rf.MERGED_FAILURES, [{"sample_id": "b", "reason": "old"}, {"sample_id": "c", "reason": "x"}]
    )
    assert current_failures(tmp_path, images_per_sample=2) == [
        {"sample_id": "b", "reason": "old"},
        {"sample_id": "c", "reason": "x"},
    ]


def _failure_files(run_dir) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in run_dir.glob("failures*.jsonl")}


def _results_of_scoring(run_dir) -> dict:
    score_run(run_dir, _options(allow_failures=1))
    results = _results(run_dir)
    del results["provenance"]
    return results
