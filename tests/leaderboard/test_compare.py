"""The regression gate: paired comparisons on constructed runs with known differences, exit codes, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from leaderboard_builders import results_file, write_run

from mige_bench.cli import main
from mige_bench.compare import OVERALL, compare_runs, format_comparison, parse_tolerances
from mige_bench.errors import MigeBenchError

SAMPLES = [f"s{index:02d}" for index in range(20)]
BASE_L1 = [0.10 + 0.01 * (index % 5) for index in range(20)]
BASE_DINO = [0.80 + 0.005 * (index % 7) for index in range(20)]
CATEGORIES = {sample_id: ("a" if index < 10 else "b") for index, sample_id in enumerate(SAMPLES)}


def _run(tmp_path: Path, name: str, l1_shift: float, dino_shift: float, **results_options) -> Path:
    """A run whose per-sample scores are the base scores shifted; ``l1_shift`` applies to category b only."""
    scores = {
        sample_id: {
            "l1": BASE_L1[index] + (l1_shift if CATEGORIES[sample_id] == "b" else 0.0),
            "dino": BASE_DINO[index] + dino_shift * (1 if index % 2 else -1) * (index % 3),
        }
        for index, sample_id in enumerate(SAMPLES)
    }
    results = results_file(name, {"l1": (0.1, 0.1, 0.1), "dino": (0.8, 0.8, 0.8)}, n=20, **results_options)
    return write_run(tmp_path / name, results, scores, CATEGORIES)


def _by_scope(comparison, column: str) -> dict[str, object]:
    return {item.scope: item for item in comparison.differences if item.column == column}


def test_significant_worsening_is_a_regression_and_exits_1(tmp_path: Path, capsys) -> None:
    base, new = _run(tmp_path, "base", 0.0, 0.0), _run(tmp_path, "new", 0.05, 0.0)
    comparison = compare_runs(base, new)
    l1 = _by_scope(comparison, "l1")
    assert l1[OVERALL].mean_diff == pytest.approx(0.025)
    assert l1[OVERALL].verdict == "REGRESSION"
    assert l1["category=b"].mean_diff == pytest.approx(0.05)
    assert l1["category=b"].verdict == "worse"
    assert l1["category=a"].verdict == "no significant change"
    assert [item.column for item in comparison.regressions] == ["l1"]

    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(base), str(new)])
    assert exit_info.value.code == 1
    output = capsys.readouterr().out
    assert "FAIL: 1 metric(s) regressed beyond tolerance with significance: l1." in output
    assert "| l1 ↓ | all samples | 20 | 0.1200 | 0.1450 |" in output


def test_noise_that_averages_out_is_no_significant_change_and_exits_0(tmp_path: Path, capsys) -> None:
    base, new = _run(tmp_path, "base", 0.0, 0.0), _run(tmp_path, "new", 0.0, 0.01)
    dino = _by_scope(compare_runs(base, new), "dino")[OVERALL]
    assert dino.ci_low < 0 < dino.ci_high
    assert dino.verdict == "no significant change"
    assert main(["compare", str(base), str(new)]) == 0
    assert "PASS: no metric regressed" in capsys.readouterr().out


def test_lower_l1_is_better(tmp_path: Path) -> None:
    base, new = _run(tmp_path, "base", 0.0, 0.0), _run(tmp_path, "new", -0.05, 0.0)
    comparison = compare_runs(base, new)
    assert _by_scope(comparison, "l1")[OVERALL].verdict == "better"
    assert not comparison.regressions


def test_tolerance_lets_a_small_significant_worsening_pass(tmp_path: Path) -> None:
    base, new = _run(tmp_path, "base", 0.0, 0.0), _run(tmp_path, "new", 0.05, 0.0)
    comparison = compare_runs(base, new, {"l1": 0.1})
    assert _by_scope(comparison, "l1")[OVERALL].verdict == "worse (within tolerance)"
    assert not comparison.regressions
    assert main(["compare", str(base), str(new), "--tolerance", "l1=0.1"]) == 0


def test_only_shared_samples_are_paired(tmp_path: Path) -> None:
    base = _run(tmp_path, "base", 0.0, 0.0)
    new = _run(tmp_path, "new", 0.0, 0.0)
    with (new.parent / "scores.jsonl").open("a") as handle:
        handle.write('{"sample_id": "extra", "k": 0, "image": "images/extra.png", "metadata": {}, ')
        handle.write('"scores": {"l1": 9.0, "dino": -1.0}, "excluded": {}}\n')
    comparison = compare_runs(base, new)
    assert (comparison.shared_samples, comparison.only_in_base, comparison.only_in_new) == (20, 0, 1)
    assert _by_scope(comparison, "l1")[OVERALL].mean_diff == 0.0
    assert "on 20 shared samples (0 only in base, 1 only in new)" in format_comparison(comparison)


@pytest.mark.parametrize(
    ("options", "named_field"),
    [
        ({"version": 2}, "protocol.version: 1 vs 2"),
        ({"dino_weights": "e" * 64}, "backbones.dino.weight_sha256"),
        (
            {"metric_args": {"against": "source_image"}},
            "protocol.metrics.l1.args.against: target_image vs source_image",
        ),
        ({"task_id": "toy@other"}, "task_id: toy@mige vs toy@other"),
    ],
)
def test_refuses_runs_of_different_protocol_version_or_backbones(
    tmp_path: Path, capsys, options: dict, named_field: str
) -> None:
    base, new = _run(tmp_path, "base", 0.0, 0.0), _run(tmp_path, "new", 0.0, 0.0, **options)
    with pytest.raises(MigeBenchError, match="Refusing to compare") as error:
        compare_runs(base, new)
    assert named_field in str(error.value)
    assert main(["compare", str(base), str(new)]) == 2
    assert named_field in capsys.readouterr().err


def test_description_change_alone_does_not_refuse(tmp_path: Path) -> None:
    base, new = _run(tmp_path, "base", 0.0, 0.0), _run(tmp_path, "new", 0.0, 0.0)
    text = new.read_text().replace("A toy editing task built in the tests.", "Reworded.")
    new.write_text(text)
    assert compare_runs(base, new).shared_samples == 20


def test_missing_scores_file_is_a_clear_error(tmp_path: Path) -> None:
    base, new = _run(tmp_path, "base", 0.0, 0.0), _run(tmp_path, "new", 0.0, 0.0)
    (new.parent / "scores.jsonl").unlink()
    with pytest.raises(MigeBenchError, match=r"scores\.jsonl not found"):
        compare_runs(base, new)


def test_tolerance_flags_are_validated(tmp_path: Path) -> None:
    assert parse_tolerances(["l1=0.005", "dino=0"]) == {"l1": 0.005, "dino": 0.0}
    for bad in (["l1"], ["l1=-1"], ["l1=x"], ["=1"]):
        with pytest.raises(MigeBenchError, match="--tolerance"):
            parse_tolerances(bad)
    base, new = _run(tmp_path, "base", 0.0, 0.0), _run(tmp_path, "new", 0.0, 0.0)
    with pytest.raises(MigeBenchError, match=r"unknown metric\(s\) \['clip_t'\]"):
        compare_runs(base, new, {"clip_t": 0.1})
