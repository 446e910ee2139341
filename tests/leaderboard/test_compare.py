"""The regression gate: paired comparisons on constructed runs with known differences, exit codes, refusals."""

from __future__ import annotations

import json
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


def _run(
    tmp_path: Path,
    name: str,
    l1_shift: float,
    dino_shift: float,
    failed: tuple[str, ...] = (),
    absent: tuple[str, ...] = (),
    digests: dict[str, str] | None = None,
    **results_options,
) -> Path:
    """A run whose per-sample scores are the base scores shifted; ``l1_shift`` applies to category b only.

    ``failed`` samples have no score line and a line in ``failures.jsonl``; ``absent`` ones are not in the run.
    """
    scores = {
        sample_id: {
            "l1": BASE_L1[index] + (l1_shift if CATEGORIES[sample_id] == "b" else 0.0),
            "dino": BASE_DINO[index] + dino_shift * (1 if index % 2 else -1) * (index % 3),
        }
        for index, sample_id in enumerate(SAMPLES)
        if sample_id not in failed and sample_id not in absent
    }
    results = results_file(
        name, {"l1": (0.1, 0.1, 0.1), "dino": (0.8, 0.8, 0.8)}, n=20, failed=len(failed), **results_options
    )
    path = write_run(tmp_path / name, results, scores, CATEGORIES, digests)
    records = [{"sample_id": sample_id, "reason": "RuntimeError: CUDA out of memory"} for sample_id in failed]
    if records:
        (path.parent / "failures.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


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


def test_runs_made_from_different_copies_of_the_data_are_refused_sample_by_sample(tmp_path: Path) -> None:
    same = {sample_id: f"digest-{sample_id}" for sample_id in SAMPLES}
    other = {**same, "s03": "digest-of-a-corrected-image", "s17": "digest-of-another-prompt"}
    base = _run(tmp_path, "base", 0.0, 0.0, digests=same)
    # Only the shared samples' digests are compared: a subset run from the same copy compares fine.
    subset = _run(tmp_path, "subset", 0.0, 0.0, absent=("s00", "s01"), digests=same)
    assert compare_runs(base, subset, allow_missing=2).shared_samples == 18
    # Lines without digests (older runs) cannot be checked and are passed over.
    assert compare_runs(base, _run(tmp_path, "older", 0.0, 0.0)).shared_samples == 20
    with pytest.raises(
        MigeBenchError, match=r"2 of their 20 shared samples were made from different data \(s03, s17\)"
    ):
        compare_runs(base, _run(tmp_path, "other_copy", 0.0, 0.0, digests=other))


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
    assert comparison.passed  # samples scored only in the candidate never fail the gate
    output = format_comparison(comparison)
    assert "on 20 shared samples (0 only in base, 1 only in new)" in output
    assert output.endswith("PASS: no metric regressed beyond its tolerance with significance.")


MISSING_FAIL = (
    "FAIL: 2 samples scored in the base run have no score in the new run: 1 failed to generate (s03), 1 is not in the "
    "new run (s07); the means above leave them out (allowed: 0; pass --allow-missing 2 to accept)."
)
MISSING_NOTE = (
    "NOTE: 2 samples scored in the base run have no score in the new run: 1 failed to generate (s03), 1 is not in the "
    "new run (s07); accepted by --allow-missing 2, and left out of the means above."
)


def test_a_candidate_lacking_base_samples_fails_the_gate_naming_them(tmp_path: Path) -> None:
    base = _run(tmp_path, "base", 0.0, 0.0)
    new = _run(tmp_path, "new", 0.0, 0.0, failed=("s03",), absent=("s07",))
    comparison = compare_runs(base, new)
    assert comparison.missing_in_new == ("s03", "s07")
    assert comparison.failed_in_new == ("s03",)
    assert (comparison.shared_samples, comparison.only_in_base, comparison.only_in_new) == (18, 2, 0)
    assert comparison.regressions == []
    assert comparison.too_many_missing
    assert not comparison.passed
    output = format_comparison(comparison)
    assert "on 18 shared samples (2 only in base, 0 only in new)" in output
    assert output.endswith("\n\n" + MISSING_FAIL)
    assert "PASS" not in output


def test_allow_missing_accepts_up_to_n_missing_samples(tmp_path: Path) -> None:
    base = _run(tmp_path, "base", 0.0, 0.0)
    new = _run(tmp_path, "new", 0.0, 0.0, failed=("s03",), absent=("s07",))
    one_allowed = compare_runs(base, new, allow_missing=1)
    assert not one_allowed.passed
    assert "(allowed: 1; pass --allow-missing 2 to accept)." in format_comparison(one_allowed)
    comparison = compare_runs(base, new, allow_missing=2)
    assert comparison.passed
    assert format_comparison(comparison).endswith(
        "\n\nPASS: no metric regressed beyond its tolerance with significance.\n" + MISSING_NOTE
    )
    with pytest.raises(MigeBenchError, match=r"--allow-missing -1: expected a non-negative number of samples\."):
        compare_runs(base, new, allow_missing=-1)


def test_a_regression_and_missing_samples_are_both_reported(tmp_path: Path) -> None:
    base = _run(tmp_path, "base", 0.0, 0.0)
    new = _run(tmp_path, "new", 0.05, 0.0, failed=("s03",))
    output = format_comparison(compare_runs(base, new))
    assert output.endswith(
        "\n\nFAIL: 1 metric(s) regressed beyond tolerance with significance: l1.\n"
        "FAIL: 1 sample scored in the base run has no score in the new run: 1 failed to generate (s03); the means "
        "above leave them out (allowed: 0; pass --allow-missing 1 to accept)."
    )


def test_a_long_list_of_missing_samples_is_cut_after_ten_ids(tmp_path: Path) -> None:
    base = _run(tmp_path, "base", 0.0, 0.0)
    new = _run(tmp_path, "new", 0.0, 0.0, failed=tuple(SAMPLES[:12]))
    assert (
        "FAIL: 12 samples scored in the base run have no score in the new run: 12 failed to generate (s00, s01, s02, "
        "s03, s04, s05, s06, s07, s08, s09 and 2 more);"
    ) in format_comparison(compare_runs(base, new))


def test_cli_exits_1_when_the_candidate_lacks_samples_unless_allowed(tmp_path: Path, capsys) -> None:
    base = _run(tmp_path, "base", 0.0, 0.0)
    new = _run(tmp_path, "new", 0.0, 0.0, failed=("s03",), absent=("s07",))
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(base), str(new)])
    assert exit_info.value.code == 1
    assert MISSING_FAIL in capsys.readouterr().out
    assert main(["compare", str(base), str(new), "--allow-missing", "2"]) == 0
    assert MISSING_NOTE in capsys.readouterr().out


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
