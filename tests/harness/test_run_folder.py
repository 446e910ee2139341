"""Crash-safe files of the run folder: torn lines, manifest comparison, the lock."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat

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


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        rf.write_json_atomic(tmp_path / "results.json", {"a": 1})
        rf.write_bytes_atomic(tmp_path / "image.png", b"png")
        with (tmp_path / "plain.txt").open("w"):
            pass
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == {"results.json": 0o666 & ~umask, "image.png": 0o666 & ~umask, "plain.txt": 0o666 & ~umask}


def test_jsonl_written_atomically_reads_back_line_by_line(tmp_path):
    path = tmp_path / "failures.merged.jsonl"
    rf.append_jsonl(path, [{"sample_id": "old"}])
    rf.write_jsonl_atomic(path, [{"sample_id": "a", "reason": "x"}, {"sample_id": "b", "reason": "y"}])
    assert path.read_text() == '{"reason": "x", "sample_id": "a"}\n{"reason": "y", "sample_id": "b"}\n'
    assert rf.read_jsonl(path) == [{"reason": "x", "sample_id": "a"}, {"reason": "y", "sample_id": "b"}]


def test_a_run_folder_that_is_a_file_is_refused_in_one_sentence(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(MigeBenchError) as error, rf.run_lock(tmp_path / "results.json"):
        pass
    assert str(error.value) == f"{tmp_path / 'results.json'} is a file, not a run folder; choose another --out."
    with pytest.raises(MigeBenchError) as error, rf.run_lock(tmp_path / "results.json" / "run"):
        pass
    assert str(error.value) == f"Cannot create the run folder {tmp_path / 'results.json' / 'run'}: Not a directory."


def test_a_run_folder_that_cannot_be_written_is_refused_in_one_sentence(tmp_path, monkeypatch):
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):  # as on a read-only mount (root ignores chmod, so simulate)
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    with pytest.raises(MigeBenchError) as error, rf.run_lock(tmp_path):
        pass
    assert str(error.value) == f"Cannot write to the run folder {tmp_path}: Read-only file system."
