"""Sharded generation: shards partition the samples, and merged results equal an unsharded run exactly."""

from __future__ import annotations

import json

import pytest

from mige_bench import run_folder as rf
from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.loaders.demo import draw_scene
from mige_bench.runner import (
    ExecutionOptions,
    GenerationRequest,
    merge_runs,
    run,
    score_run,
    shard_from_environment,
    shard_samples,
)
from mige_bench.sample import ModelInputs, Sample

REQUEST = GenerationRequest(task="demo", model="tests.harness.test_runner:NoiseGenerator", images_per_sample=2)


def _options(shard=None) -> ExecutionOptions:
    return ExecutionOptions(progress=False, batch_size=3, shard=shard)


def _without_run_specifics(run_dir) -> str:
    results = json.loads((run_dir / rf.RESULTS).read_text())
    del results["provenance"]["timings"], results["provenance"]["created_at"]
    return json.dumps(results, sort_keys=True)


@pytest.fixture(autouse=True)
def _no_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_sequential_shards_in_one_folder_equal_an_unsharded_run(tmp_path):
    run(REQUEST, tmp_path / "whole", _options())
    first = run(REQUEST, tmp_path / "sharded", _options((0, 2)))
    assert first.results == {}  # shard 1 has not finished: nobody scores yet
    assert len(list((tmp_path / "sharded" / "images").glob("*.png"))) == 6
    last = run(REQUEST, tmp_path / "sharded", _options((1, 2)))
    assert last.results  # the last shard to finish scores the whole run
    assert _without_run_specifics(tmp_path / "sharded") == _without_run_specifics(tmp_path / "whole")
    timings = json.loads((tmp_path / "sharded" / rf.RESULTS).read_text())["provenance"]["timings"]
    assert {"generate.shard-0-of-2", "generate.shard-1-of-2", "score"} <= set(timings)


def test_shards_in_separate_folders_merge_exactly(tmp_path):
    run(REQUEST, tmp_path / "whole", _options())
    for index in range(3):
        run(REQUEST, tmp_path / f"part{index}", _options((index, 3)), score=False)
    merge_runs([tmp_path / f"part{index}" for index in range(3)], tmp_path / "merged")
    score_run(tmp_path / "merged", _options())
    assert _without_run_specifics(tmp_path / "merged") == _without_run_specifics(tmp_path / "whole")


def test_shards_made_with_the_data_in_different_folders_merge(tmp_path):
    # Two machines with the same dataset under different paths: the data is identified by its content, not its path.
    for index in range(2):
        request = GenerationRequest(**{**REQUEST.__dict__, "data_root": tmp_path / f"machine{index}" / "data"})
        run(request, tmp_path / f"part{index}", _options((index, 2)), score=False)
    merge_runs([tmp_path / "part0", tmp_path / "part1"], tmp_path / "merged")
    assert len(list((tmp_path / "merged" / rf.IMAGES).glob("*.png"))) == 12


def test_merge_refuses_different_runs(tmp_path):
    run(REQUEST, tmp_path / "a", _options((0, 2)), score=False)
    other = GenerationRequest(task="demo", model=REQUEST.model, images_per_sample=2, seed=7)
    run(other, tmp_path / "b", _options((1, 2)), score=False)
    with pytest.raises(MigeBenchError, match=r"differs in: seed\.base"):
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")


def test_shards_partition_samples_and_never_split_a_session():
    image = ImageRef.from_pil(draw_scene("circle", "red", "white"))
    samples = []
    for session in range(5):
        for turn in range(1, 4):
            samples.append(
                Sample(
                    id=f"s{session}-t{turn}",
                    kind="edit",
                    inputs=ModelInputs(prompt="edit", source_image=image),
                    chain_from=f"s{session}-t{turn - 1}" if turn > 1 else None,
                )
            )
    shards = [shard_samples(samples, (index, 2)) for index in range(2)]
    assert sorted(s.id for shard in shards for s in shard) == sorted(s.id for s in samples)
    assert not {s.id for s in shards[0]} & {s.id for s in shards[1]}
    for shard in shards:
        sessions = {s.id.split("-")[0] for s in shard}
        assert len(shard) == 3 * len(sessions)
    assert [len(shard) for shard in shards] == [9, 6]


def test_launcher_environment_selects_the_shard(monkeypatch):
    assert shard_from_environment() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert shard_from_environment() == (2, 4)


def test_overwrite_is_refused_with_shards(tmp_path):
    options = ExecutionOptions(progress=False, shard=(0, 2), overwrite=True)
    with pytest.raises(MigeBenchError, match="--overwrite cannot be combined with sharding"):
        run(REQUEST, tmp_path / "x", options)
