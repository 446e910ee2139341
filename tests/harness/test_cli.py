"""The command line: exit codes, one-sentence errors, and the printed results table."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from mige_bench import run_folder as rf
from mige_bench.cli import COMMANDS, EXIT_BROKEN_PIPE, build_parser, main, parse_backbones, parse_key_values
from mige_bench.errors import MigeBenchError


def test_run_prints_table_and_file_locations(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--task", "demo", "--model", "identity", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / rf.RESULTS).read_text())
    assert "demo@smoke (version 1) — model identity" in printed
    assert f"{results['metrics']['l1']['mean']:.4f}" in printed
    assert "clip_t: 1 excluded (identical input and output captions)" in printed
    assert "NOT comparable" in printed
    assert str(out / rf.RESULTS) in printed


def test_score_an_image_folder(tmp_path, capsys):
    source = tmp_path / "made_elsewhere"
    main(["run", "--task", "demo", "--model", "identity", "--out", str(tmp_path / "a"), "--no-progress"])
    source.mkdir()
    for image in (tmp_path / "a" / "images").iterdir():
        (source / image.name).write_bytes(image.read_bytes())
    code = main(["score", "--images", str(source), "--task", "demo", "--out", str(tmp_path / "b"), "--no-progress"])
    assert code == 0
    first = json.loads((tmp_path / "a" / rf.RESULTS).read_text())
    second = json.loads((tmp_path / "b" / rf.RESULTS).read_text())
    assert first["metrics"] == second["metrics"]
    assert second["model"]["name"] == "folder"


def test_score_an_image_folder_names_images_no_sample_reads(tmp_path, capsys):
    main(["run", "--task", "demo", "--model", "identity", "--out", str(tmp_path / "a"), "--no-progress"])
    source = tmp_path / "made_elsewhere"
    source.mkdir()
    for image in (tmp_path / "a" / "images").iterdir():
        (source / image.name).write_bytes(image.read_bytes())
    (source / "red_circle.png").rename(source / "red-circle.png")  # a typo: that sample fails, the file goes unread
    (source / "contact_sheet.jpg").write_bytes((source / "green_square.png").read_bytes())
    capsys.readouterr()
    argv = ["score", "--images", str(source), "--task", "demo", "--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"warning: 2 image(s) in {source} match no sample of demo@smoke and will not be scored: contact_sheet.jpg, "
        "red-circle.png. Names must be the sample id (e.g. red_circle.png)."
    )
    assert f"missing file {source / 'red_circle.png'}" in err
    # --limit scores a subset; the images of the samples beyond it are the task's, not strays.
    main([*argv, str(tmp_path / "c"), "--limit", "2"])
    assert capsys.readouterr().err.startswith(f"warning: 2 image(s) in {source} match no sample of demo@smoke")
    main([*argv, str(tmp_path / "d"), "--images-per-sample", "2"])
    err = capsys.readouterr().err
    assert err.startswith(f"warning: 7 image(s) in {source} match no sample of demo@smoke and will not be scored: ")
    assert ", night_background.png and 2 more. Names must be the sample id plus _<k> for k = 0..1 (e.g. " in err
    assert "(e.g. red_circle_0.png, red_circle_1.png)." in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--task", "dmeo", "--model", "identity"], "Unknown task 'dmeo'"),
        (["run", "--task", "demo", "--model", "identty"], "Unknown model 'identty'. Did you mean 'identity'?"),
        (["run", "--task", "demo", "--model", "identity", "--backbone", "clap=x"], "expected clip=..., dino=..."),
        (["score", "/definitely/not/a/run"], "is not a run folder"),
        (
            ["run", "--task", "demo", "--model", "folder"],
            "Model 'folder' needs argument(s) dir: pass --model-args dir=VALUE",
        ),
        (["run", "--task", "demo", "--model", "os:path"], "Model 'os:path' is a module, not a subclass of"),
        (["run", "--task", "demo", "--model", "identity", "--device", "foo"], "--device 'foo' is not a torch device"),
        (
            ["score", "runs/demo/identity", "--limit", "2", "--overwrite"],
            "--limit, --overwrite: only for score --images. A run folder is scored in place, as generated",
        ),
    ],
)
def test_bad_input_gets_one_clear_sentence_and_exit_code_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert message in error
    assert "Traceback" not in error


def test_score_of_a_run_folder_refuses_task_and_out_because_it_is_scored_in_place(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["score", "runs/demo/identity", "--task", "emu_edit@mige"]) == 2
    assert capsys.readouterr().err == (
        "error: --task: only for score --images. A run folder is scored in place, as generated (its manifest fixes "
        "the task, samples and images); to change those, use `run`.\n"
    )
    assert main(["score", "runs/demo/identity", "--out", "elsewhere"]) == 2
    assert capsys.readouterr().err.startswith("error: --out: only for score --images. A run folder is scored in place")


def test_data_check_without_data_root_looks_where_data_fetch_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIGE_BENCH_HOME", str(tmp_path / "home"))
    assert main(["data", "check", "dreambench@mige"]) == 2
    assert capsys.readouterr().err == (
        "error: No local copy of the data for task dreambench@mige. Run `mige-bench data fetch dreambench@mige` on a "
        f"machine with internet (it writes to {tmp_path / 'home' / 'data' / 'dreambench'}), or pass --data-root DIR "
        "pointing at your own copy.\n"
    )


@pytest.mark.parametrize(("to", "check"), [(None, ""), ("copy", " --data-root {copy}")], ids=["default", "to"])
def test_data_fetch_names_the_data_check_that_finds_the_copy(tmp_path, monkeypatch, caplog, to, check):
    monkeypatch.setenv("MIGE_BENCH_HOME", str(tmp_path / "home"))
    # The fetch itself is the loader's (tested with the loaders); here it only has to return its folder.
    monkeypatch.setattr(
        "mige_bench.data_store._dataset_module",
        lambda task: types.SimpleNamespace(fetch=lambda task, destination, progress: destination),
    )
    copy = tmp_path / "copy"
    with caplog.at_level(logging.INFO, logger="mige_bench.data_store"):
        assert main(["data", "fetch", "dreambench@mige", *(["--to", str(copy)] if to else [])]) == 0
    folder = copy if to else tmp_path / "home" / "data" / "dreambench"
    assert caplog.messages == [
        f"Fetched the data of dreambench@mige into {folder}; validate it with "
        f"`mige-bench data check dreambench@mige{check.format(copy=copy)}`."
    ]


def test_typo_in_task_yaml_is_reported_with_file_and_key(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("name: t\nprotocol: p\nversion: 1\nkind: edit\nloader: demo\nprimary_metric: l1\nmetrcs: {}\n")
    assert main(["run", "--task", str(path), "--model", "identity", "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and "unknown key 'metrcs'" in error and "did you mean 'metrics'?" in error


def test_ls_lists_registered_plugins(capsys):
    assert main(["ls", "tasks"]) == 0
    assert "demo@smoke" in capsys.readouterr().out
    assert main(["ls", "metrics"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("dino", "clip_i", "clip_t", "clip_dir", "l1", "l2", "lpips"))
    assert main(["ls", "models"]) == 0
    assert "copy_reference" in capsys.readouterr().out


def test_key_value_parsing():
    assert parse_key_values("dir=out, steps=4", "--model-args") == {"dir": "out", "steps": "4"}
    assert parse_backbones(["clip=/w/clip", "dino=smoke"]) == {"clip": "/w/clip", "dino": "smoke"}
    with pytest.raises(MigeBenchError, match="not of the form key=value"):
        parse_key_values("oops", "--model-args")


# Pinned means of `make demo` (identity on demo@smoke with the seeded smoke backbones). L1 and L2 are also checked
# against an independent numpy computation in test_runner; the encoder-based values guard against any change in
# preprocessing, smoke-backbone construction or scoring code paths silently moving numbers.
DEMO_GOLDEN_MEANS = {
    "l1": 0.134431,
    "l2": 0.102148,
    "clip_i": 0.923834,
    "dino": 0.93912,
    "clip_t": -0.129731,
    "clip_dir": 0.0,
    "lpips": 0.095501,
}


def test_demo_golden_numbers(tmp_path):
    out = tmp_path / "demo"
    assert main(["run", "--task", "demo", "--model", "identity", "--out", str(out), "--no-progress"]) == 0
    means = {
        column: summary["mean"] for column, summary in json.loads((out / rf.RESULTS).read_text())["metrics"].items()
    }
    assert means == pytest.approx(DEMO_GOLDEN_MEANS, abs=2e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Parsing: impossible values, mistyped options, -v, --version
# ----------------------------------------------------------------------------------------------------------------------

RUN = ["run", "--task", "demo", "--model", "identity", "--no-progress"]
SCORE_IMAGES = ["score", "--images", "made_elsewhere", "--task", "demo", "--no-progress"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*RUN, "--limit", "-1"], "mige-bench run: error: argument --limit: must be at least 1, got -1"),
        ([*RUN, "--limit", "0"], "mige-bench run: error: argument --limit: must be at least 1, got 0"),
        (
            [*RUN, "--images-per-sample", "0"],
            "mige-bench run: error: argument --images-per-sample: must be at least 1, got 0",
        ),
        (
            [*RUN, "--images-per-sample", "-2"],
            "mige-bench run: error: argument --images-per-sample: must be at least 1, got -2",
        ),
        (
            [*RUN, "--allow-failures", "-3"],
            "mige-bench run: error: argument --allow-failures: must be at least 0, got -3",
        ),
        ([*RUN, "--batch-size", "0"], "mige-bench run: error: argument --batch-size: must be at least 1, got 0"),
        ([*RUN, "--limit", "two"], "mige-bench run: error: argument --limit: expected an integer, got 'two'"),
        ([*SCORE_IMAGES, "--limit", "0"], "mige-bench score: error: argument --limit: must be at least 1, got 0"),
        ([*RUN, "--limt", "3"], "mige-bench run: error: unrecognized arguments: --limt 3"),
        (
            ["data", "check", "demo", "--data-root", "x", "--bogus"],
            "mige-bench data check: error: unrecognized arguments: --bogus",
        ),
    ],
)
def test_bad_flags_stop_at_parsing_with_the_subcommand_usage(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"usage: {message.split(':')[0]} [-h] [-v]")
    assert error.endswith(f"{message}\n")
    assert not (tmp_path / "runs").exists()


def test_verbose_is_accepted_before_and_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["-v", "ls", "tasks"]).verbose is True
    assert parser.parse_args(["ls", "tasks", "-v"]).verbose is True
    assert parser.parse_args(["data", "check", "demo", "--data-root", "x", "--verbose"]).verbose is True
    assert parser.parse_args(["ls", "tasks"]).verbose is False


def test_verbose_is_accepted_after_convert_mige_too():
    parser = build_parser()
    assert parser.parse_args(["convert-mige", "--out", "x", "-v"]).verbose is True
    assert parser.parse_args(["-v", "convert-mige", "--out", "x"]).verbose is True
    assert parser.parse_args(["convert-mige", "--out", "x"]).verbose is False


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"mige-bench {importlib.metadata.version('mige-bench')}\n"


# ----------------------------------------------------------------------------------------------------------------------
# One line instead of a traceback
# ----------------------------------------------------------------------------------------------------------------------


def test_no_gpu_for_device_cuda_is_one_sentence(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*RUN, "--device", "cuda", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        "error: --device cuda: no CUDA GPU is usable here (torch.cuda.is_available() is False); use --device cpu.\n"
    )
    assert not (tmp_path / "run").exists()


def test_out_pointing_at_a_file_is_one_sentence(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*RUN, "--out", str(tmp_path / "notes.txt")]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'notes.txt'} is a file, not a run folder; choose another --out.\n"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_os_error_no_check_caught_is_one_line_naming_the_path(monkeypatch, capsys):
    def unreadable(args):
        raise PermissionError(13, "Permission denied", "/shared/runs/demo/results.json")

    monkeypatch.setitem(COMMANDS, "ls", unreadable)
    assert main(["ls", "tasks"]) == 2
    assert capsys.readouterr().err == "error: /shared/runs/demo/results.json: Permission denied\n"


def test_a_closed_output_pipe_ends_quietly(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as after `| head -1` has its line
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "mige_bench", "ls", "tasks"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert finished.stderr.decode() == ""
    assert finished.returncode == EXIT_BROKEN_PIPE


def test_compare_accepts_run_folders(tmp_path, capsys):
    for name in ("base", "new"):
        assert main([*RUN, "--limit", "3", "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "base" / rf.RESULTS), str(tmp_path / "new" / rf.RESULTS)]) == 0
    from_files = capsys.readouterr().out
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new")]) == 0
    assert capsys.readouterr().out == from_files
    assert main([*RUN, "--limit", "3", "--no-score", "--out", str(tmp_path / "unscored")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "unscored")]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'unscored'} holds no results.json; score it first with: "
        f"mige-bench score {tmp_path / 'unscored'}\n"
    )


# ----------------------------------------------------------------------------------------------------------------------
# score --images: resumable, with the subset flags of run
# ----------------------------------------------------------------------------------------------------------------------


def _images_made_elsewhere(tmp_path) -> Path:
    made = tmp_path / "made"
    assert main([*RUN, "--out", str(made)]) == 0
    source = tmp_path / "made_elsewhere"
    source.mkdir()
    for image in (made / "images").iterdir():
        (source / image.name).write_bytes(image.read_bytes())
    return source


def test_score_images_resumes_once_the_missing_file_is_added(tmp_path, capsys):
    source = _images_made_elsewhere(tmp_path)
    kept_aside = (source / "keep_everything.png").read_bytes()
    (source / "keep_everything.png").unlink()
    argv = ["score", "--images", str(source), "--task", "demo", "--out", str(tmp_path / "scored"), "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2
    assert "error: 1 sample(s) failed to generate" in capsys.readouterr().err
    (source / "keep_everything.png").write_bytes(kept_aside)
    assert main(argv) == 0
    results = json.loads((tmp_path / "scored" / rf.RESULTS).read_text())
    assert results["counts"]["failed_samples"] == 0
    assert results["counts"]["scored_images"] == 6
    assert results["metrics"] == json.loads((tmp_path / "made" / rf.RESULTS).read_text())["metrics"]


def test_score_images_takes_limit_and_overwrite_like_run(tmp_path, capsys):
    source = _images_made_elsewhere(tmp_path)
    assert main([*RUN, "--limit", "2", "--out", str(tmp_path / "base")]) == 0
    argv = ["score", "--images", str(source), "--task", "demo", "--out", str(tmp_path / "new"), "--no-progress"]
    assert main([*argv, "--limit", "2"]) == 0
    base = json.loads((tmp_path / "base" / rf.RESULTS).read_text())
    new = json.loads((tmp_path / "new" / rf.RESULTS).read_text())
    assert new["counts"]["scored_samples"] == base["counts"]["scored_samples"] == 2
    assert new["metrics"] == base["metrics"]
    # A larger limit extends the run; a smaller one is another run.
    assert main([*argv, "--limit", "3"]) == 0
    assert json.loads((tmp_path / "new" / rf.RESULTS).read_text())["counts"]["scored_samples"] == 3
    capsys.readouterr()
    assert main([*argv, "--limit", "1"]) == 2
    assert "holds a different run (differs in: limit, samples.content_sha256, samples.count" in capsys.readouterr().err
    assert main([*argv, "--limit", "1", "--overwrite"]) == 0
    assert json.loads((tmp_path / "new" / rf.RESULTS).read_text())["counts"]["scored_samples"] == 1
