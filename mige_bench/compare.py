"""The regression gate: paired comparison of two runs of one task on the samples they share.

``mige-bench compare BASE.json NEW.json`` reads the two results files and the ``scores.jsonl`` of their run folders.
For every metric it pairs the per-sample scores (the mean over each sample's images) of the samples scored in both
runs and computes the mean difference ``new − base`` with a paired bootstrap 95% confidence interval
(:func:`mige_bench.metrics.functional.paired_bootstrap_diff`), overall and per category of the task's breakdown keys.

Verdicts, on the signed improvement (the difference for higher-is-better metrics, its negation otherwise):

- ``better``: the interval lies entirely above 0;
- ``worse``: entirely below 0;
- ``REGRESSION``: entirely below ``−tolerance`` (a ``worse`` that the gate fails on; the default tolerance is 0);
- ``no significant change``: the interval contains 0, or fewer than two samples are shared.

Only the overall rows gate: per-category rows are many small tests at once and would raise false alarms. Runs of
different task ids, versions, protocol definitions or backbones are refused (see
:func:`mige_bench.leaderboard.collect.protocol_differences`).

Samples that the base run scored and the new run did not (its generation failed, or the sample is not in the run)
also fail the gate: the paired means leave them out, so a model that crashes on the hard samples would otherwise
look as good as before. ``allow_missing`` (``--allow-missing N``) accepts up to N of them. Samples scored only in the
new run are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mige_bench.errors import MigeBenchError
from mige_bench.leaderboard.collect import protocol_differences
from mige_bench.metrics.functional import paired_bootstrap_diff
from mige_bench.results import per_sample_means
from mige_bench.run_folder import SCORES, read_failure_records, read_json, read_jsonl

logger = logging.getLogger(__name__)

OVERALL = "all samples"
MIN_PAIRS_FOR_SIGNIFICANCE = 2
LISTED_IDS = 10
"""Sample ids named in the missing-samples line; the rest are counted."""


@dataclass(frozen=True)
class Difference:
    """The paired comparison of one metric on one set of samples.

    Attributes:
        column: Score column.
        scope: :data:`OVERALL` or ``<breakdown key>=<category>``.
        higher_is_better: Direction of the metric.
        n: Shared samples compared.
        base_mean: Mean of the base run over those samples.
        new_mean: Mean of the new run over those samples.
        mean_diff: ``new_mean − base_mean``.
        ci_low: Lower end of the paired bootstrap 95% interval of ``mean_diff``.
        ci_high: Upper end of that interval.
        tolerance: Allowed worsening before a significant one counts as a regression.
    """

    column: str
    scope: str
    higher_is_better: bool
    n: int
    base_mean: float
    new_mean: float
    mean_diff: float
    ci_low: float
    ci_high: float
    tolerance: float

    @property
    def improvement_interval(self) -> tuple[float, float]:
        """The interval of the difference, signed so that positive always means better."""
        if self.higher_is_better:
            return self.ci_low, self.ci_high
        return -self.ci_high, -self.ci_low

    @property
    def regressed(self) -> bool:
        """Significantly worse beyond the tolerance, on all samples (category rows never gate)."""
        significant = self.n >= MIN_PAIRS_FOR_SIGNIFICANCE
        return self.scope == OVERALL and significant and self.improvement_interval[1] < -self.tolerance

    @property
    def verdict(self) -> str:
        low, high = self.improvement_interval
        if self.n < MIN_PAIRS_FOR_SIGNIFICANCE or low <= 0 <= high:
            return "no significant change"
        if low > 0:
            return "better"
        if self.scope != OVERALL:
            return "worse"
        return "REGRESSION" if self.regressed else "worse (within tolerance)"


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare_runs`.

    Attributes:
        task_id: The task both runs measured.
        base_model: Generator name of the base run.
        new_model: Generator name of the new run.
        shared_samples: Samples scored in both runs (the paired ones).
        missing_in_new: Ids of the samples scored in the base run and not in the new run, sorted.
        failed_in_new: Those of them whose generation failed in the new run (its ``failures*.jsonl``); the others
            are not in the new run at all (another subset, or never generated).
        only_in_new: Samples scored only in the new run (ignored).
        allow_missing: Missing samples accepted before the gate fails.
        comparable: False when either run used smoke backbones.
        differences: Overall and per-category differences.
    """

    task_id: str
    base_model: str
    new_model: str
    shared_samples: int
    missing_in_new: tuple[str, ...]
    failed_in_new: tuple[str, ...]
    only_in_new: int
    allow_missing: int
    comparable: bool
    differences: tuple[Difference, ...]

    @property
    def only_in_base(self) -> int:
        """Samples scored only in the base run: those the new run lacks."""
        return len(self.missing_in_new)

    @property
    def regressions(self) -> list[Difference]:
        """Overall rows that fail the gate."""
        return [item for item in self.differences if item.regressed]

    @property
    def too_many_missing(self) -> bool:
        """The new run lacks more of the base run's samples than ``allow_missing`` accepts."""
        return len(self.missing_in_new) > self.allow_missing

    @property
    def passed(self) -> bool:
        """The gate's verdict: no regression, and no more missing samples than accepted."""
        return not self.regressions and not self.too_many_missing


def parse_tolerances(items: Sequence[str] | None) -> dict[str, float]:
    """Parses repeated ``--tolerance metric=delta`` flags (delta: a non-negative number in the metric's units)."""
    tolerances: dict[str, float] = {}
    for item in items or []:
        column, sep, value = item.partition("=")
        try:
            delta = float(value)
        except ValueError:
            delta = -1.0
        if not sep or not column or delta < 0:
            raise MigeBenchError(
                f"--tolerance {item!r}: expected metric=delta with a non-negative number, e.g. l1=0.005."
            )
        tolerances[column.strip()] = delta
    return tolerances


def _score_lines(results_path: Path) -> list[dict[str, Any]]:
    scores = results_path.parent / SCORES
    if not scores.is_file():
        raise MigeBenchError(
            f"{scores} not found: compare pairs per-sample scores, so give the results.json inside a run folder."
        )
    return read_jsonl(scores)


def _difference(
    column: str, scope: str, higher_is_better: bool, base: Mapping[str, float], new: Mapping[str, float],
    sample_ids: Sequence[str], tolerance: float,
) -> Difference | None:  # fmt: skip
    if not sample_ids:
        return None
    base_values = [base[sample_id] for sample_id in sample_ids]
    new_values = [new[sample_id] for sample_id in sample_ids]
    paired = paired_bootstrap_diff(base_values, new_values)
    return Difference(
        column=column,
        scope=scope,
        higher_is_better=higher_is_better,
        n=len(sample_ids),
        base_mean=sum(base_values) / len(base_values),
        new_mean=sum(new_values) / len(new_values),
        mean_diff=paired["mean_diff"],
        ci_low=paired["ci_low"],
        ci_high=paired["ci_high"],
        tolerance=tolerance,
    )


def _samples_with_other_data(base: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[str]:
    """Shared sample ids whose digests (``sample_sha256`` of the score lines) differ between the runs.

    Lines without a digest (written before digests were recorded) cannot be checked and are passed over.
    """
    base_digests = {line["sample_id"]: line["sample_sha256"] for line in base if "sample_sha256" in line}
    new_digests = {line["sample_id"]: line["sample_sha256"] for line in new if "sample_sha256" in line}
    return sorted(i for i in base_digests.keys() & new_digests.keys() if base_digests[i] != new_digests[i])


def _categories(lines: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, str]]:
    """Breakdown key -> sample id -> category, from the score lines' metadata."""
    return {
        key: {line["sample_id"]: str(line["metadata"][key]) for line in lines if line["metadata"].get(key) is not None}
        for key in keys
    }


def compare_runs(
    base_path: Path, new_path: Path, tolerances: Mapping[str, float] | None = None, allow_missing: int = 0
) -> Comparison:
    """Compares two runs of one task on their shared samples.

    Args:
        base_path: ``results.json`` of the reference run (its ``scores.jsonl`` must sit next to it).
        new_path: ``results.json`` of the candidate run.
        tolerances: Score column -> allowed worsening (default 0 for every column).
        allow_missing: Samples scored in the base run that the new run may lack (failed or absent) before the gate
            fails (default 0: any one fails it).

    Returns:
        Overall and per-category differences for every metric, and the samples the new run lacks.

    Raises:
        MigeBenchError: The runs differ in task id, version, protocol definition or backbones; a tolerance names an
            unknown column; ``allow_missing`` is negative; a ``scores.jsonl`` is missing; the runs share no scored
            sample, or shared samples were made from different data (their ``sample_sha256`` differ).
    """
    if allow_missing < 0:
        raise MigeBenchError(f"--allow-missing {allow_missing}: expected a non-negative number of samples.")
    base, new = read_json(base_path), read_json(new_path)
    differing = protocol_differences(base, new)
    if differing:
        raise MigeBenchError(
            f"Refusing to compare {base_path} with {new_path}: they were not measured under the same task version, "
            f"protocol and backbones ({'; '.join(differing)})."
        )
    tolerances = dict(tolerances or {})
    unknown = sorted(set(tolerances) - set(base["metrics"]))
    if unknown:
        raise MigeBenchError(
            f"--tolerance names unknown metric(s) {unknown}; the task's are {sorted(base['metrics'])}."
        )
    base_lines, new_lines = _score_lines(base_path), _score_lines(new_path)
    base_ids = {line["sample_id"] for line in base_lines}
    new_ids = {line["sample_id"] for line in new_lines}
    if not base_ids & new_ids:
        raise MigeBenchError(f"{base_path} and {new_path} share no scored sample; nothing to compare.")
    changed = _samples_with_other_data(base_lines, new_lines)
    if changed:
        raise MigeBenchError(
            f"Refusing to compare {base_path} with {new_path}: {len(changed)} of their {len(base_ids & new_ids)} "
            f"shared samples were made from different data ({_listed(changed)}): the runs used different copies of "
            "the dataset (other prompts, images or references). Generate both from one copy."
        )
    categories = _categories(base_lines, base["task"].get("breakdown", []))
    differences = []
    for column, summary in base["metrics"].items():
        base_means, new_means = per_sample_means(base_lines, column), per_sample_means(new_lines, column)
        shared = sorted(set(base_means) & set(new_means))
        scopes = [(OVERALL, shared)]
        for key, category_of in categories.items():
            for category in sorted(set(category_of.values())):
                scopes.append((f"{key}={category}", [sid for sid in shared if category_of.get(sid) == category]))
        for scope, sample_ids in scopes:
            item = _difference(
                column,
                scope,
                summary["higher_is_better"],
                base_means,
                new_means,
                sample_ids,
                tolerances.get(column, 0.0),
            )
            if item is not None:
                differences.append(item)
    missing = sorted(base_ids - new_ids)
    failure_records = read_failure_records(new_path.parent)
    return Comparison(
        task_id=base["task_id"],
        base_model=base["model"]["name"],
        new_model=new["model"]["name"],
        shared_samples=len(base_ids & new_ids),
        missing_in_new=tuple(missing),
        failed_in_new=tuple(sample_id for sample_id in missing if sample_id in failure_records),
        only_in_new=len(new_ids - base_ids),
        allow_missing=allow_missing,
        comparable=bool(base["comparable"] and new["comparable"]),
        differences=tuple(differences),
    )


def _difference_table(differences: Sequence[Difference], with_tolerance: bool) -> list[str]:
    header = "| metric | scope | n | base | new | new − base [95% CI] |" + (" tolerance |" if with_tolerance else "")
    rule = "| --- | --- | ---: | ---: | ---: | --- |" + (" ---: |" if with_tolerance else "")
    lines = [header + " verdict |", rule + " --- |"]
    for item in differences:
        arrow = "↑" if item.higher_is_better else "↓"
        tolerance = f" {item.tolerance:g} |" if with_tolerance else ""
        lines.append(
            f"| {item.column} {arrow} | {item.scope} | {item.n} | {item.base_mean:.4f} | {item.new_mean:.4f} | "
            f"{item.mean_diff:+.4f} [{item.ci_low:+.4f}, {item.ci_high:+.4f}] |{tolerance} {item.verdict} |"
        )
    return lines


def _listed(sample_ids: Sequence[str]) -> str:
    shown = ", ".join(sample_ids[:LISTED_IDS])
    return shown + (f" and {len(sample_ids) - LISTED_IDS} more" if len(sample_ids) > LISTED_IDS else "")


def describe_missing(comparison: Comparison) -> str:
    """``2 samples scored in the base run have no score in the new run: 1 failed to generate (s03), 1 is not in the
    new run (s07)``; empty when the new run lacks none."""
    missing = comparison.missing_in_new
    if not missing:
        return ""
    failed = comparison.failed_in_new
    absent = [sample_id for sample_id in missing if sample_id not in failed]
    parts = []
    if failed:
        parts.append(f"{len(failed)} failed to generate ({_listed(failed)})")
    if absent:
        parts.append(f"{len(absent)} {'is' if len(absent) == 1 else 'are'} not in the new run ({_listed(absent)})")
    subject = "1 sample" if len(missing) == 1 else f"{len(missing)} samples"
    verb = "has" if len(missing) == 1 else "have"
    return f"{subject} scored in the base run {verb} no score in the new run: {', '.join(parts)}"


def format_comparison(comparison: Comparison) -> str:
    """The comparison as markdown tables, overall then per category (readable in a terminal, pasteable into a CI
    job summary), then the verdict: a FAIL line per reason (regressions, missing samples) or a PASS line, and notes."""
    overall = [item for item in comparison.differences if item.scope == OVERALL]
    per_category = [item for item in comparison.differences if item.scope != OVERALL]
    lines = [
        f"{comparison.task_id}: {comparison.new_model} (new) vs {comparison.base_model} (base) on "
        f"{comparison.shared_samples} shared samples ({comparison.only_in_base} only in base, "
        f"{comparison.only_in_new} only in new)",
        "",
        *_difference_table(overall, with_tolerance=True),
    ]
    if per_category:
        lines += ["", "Per category (informative; does not gate):", "", *_difference_table(per_category, False)]
    lines.append("")
    regressions = comparison.regressions
    if regressions:
        names = ", ".join(item.column for item in regressions)
        lines.append(f"FAIL: {len(regressions)} metric(s) regressed beyond tolerance with significance: {names}.")
    missing = describe_missing(comparison)
    if comparison.too_many_missing:
        lines.append(
            f"FAIL: {missing}; the means above leave them out (allowed: {comparison.allow_missing}; pass "
            f"--allow-missing {len(comparison.missing_in_new)} to accept)."
        )
    if comparison.passed:
        lines.append("PASS: no metric regressed beyond its tolerance with significance.")
    if missing and not comparison.too_many_missing:
        lines.append(
            f"NOTE: {missing}; accepted by --allow-missing {comparison.allow_missing}, and left out of the means above."
        )
    if not comparison.comparable:
        lines.append(
            "NOTE: smoke (random) backbones were used — these numbers are NOT comparable to published results."
        )
    return "\n".join(lines)
