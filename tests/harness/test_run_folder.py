"""Crash-safe files of the run folder: torn lines, manifest comparison, the lock."""

from __future__ import annotations

import json
import os
import socket

import pytest

from mige_bench import run_folder as rf
from mige_bench.errors import MigeBenchError


def test_torn_last_jsonl_line_is_dropped_and_truncated(tmp_path):
    path = tmp_path / "scores.jsonl"
    rf.append_jsonl(path, [{"a": 1}, {"a": 2}])
    with path.open("a") as handle:
        handle.write('{"a": 3, "b"')  # a crash mid-append
    assert rf.read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text().count("\n") == 2
    rf.append_jsonl(path, [{"a": 3}])
    assert [record["a"] for record in rf.read_jsonl(path)] == [1, 2, 3]


def test_corruption_before_the_last_line_is_an_error(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"a": 1}\nGARBAGE\n{"a": 3}\n')
    with pytest.raises(MigeBenchError, match="corrupt line"):
        rf.read_jsonl(path)


def test_manifest_differences_lists_dotted_keys():
    old = {"seed": {"base": 0}, "model": {"name": "identity", "args": {}}, "limit": None}
    new = {"seed": {"base": 1}, "model": {"name": "identity", "args": {"x": "1"}}, "limit": None}
    assert rf.manifest_differences(old, new) == ["model.args.x", "seed.base"]


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    with (
        rf.run_lock(tmp_path),
        pytest.raises(MigeBenchError, match=f"in use by process {os.getpid()}"),
        rf.run_lock(tmp_path),
    ):
        pass
    assert not (tmp_path / rf.LOCK).exists()
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    (tmp_path / rf.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid}))
    with rf.run_lock(tmp_path):
        assert json.loads((tmp_path / rf.LOCK).read_text())["pid"] == os.getpid()


def test_atomic_json_write_replaces_whole_file(tmp_path):
    path = tmp_path / "results.json"
    rf.write_json_atomic(path, {"b": 1, "a": [1, 2]})
    rf.write_json_atomic(path, {"c": 3})
    assert json.loads(path.read_text()) == {"c": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
