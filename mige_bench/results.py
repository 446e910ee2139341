"""``results.json``: aggregates with uncertainty, per-category breakdowns, the full protocol, and provenance.

Aggregation is per sample first: the score of a sample is the mean over its output images of the values that are
defined (not excluded); means, standard errors and bootstrap 95% confidence intervals are then taken over samples,
so several images of one prompt count as one observation, not as independent ones.

The schema below is the contract for leaderboards and the regression gate; every key is documented.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from mige_bench.metrics.functional import summarize

SCHEMA_VERSION = 1

TRACKED_PACKAGES = (
    "mige-bench", "torch", "torchvision", "transformers", "diffusers", "open_clip_torch", "lpips", "numpy", "pillow",
)  # fmt: skip


class MetricSummary(TypedDict):
    metric: str  # metric registry id that computed this column (e.g. "dino")
    higher_is_better: bool  # direction of the metric
    mean: float | None  # mean over samples of the per-sample means; None when no sample has a defined value
    stderr: float | None  # standard error of that mean (sample std / sqrt(n), ddof=1)
    ci95: list[float] | None  # [low, high] percentile bootstrap 95% CI of the mean over samples; None when n < 2
    n_samples: int  # samples with at least one defined value
    n_images: int  # output images with a defined value
    excluded: dict[str, int]  # images excluded by protocol, by reason (never NaN-averaged)
    counters: dict[str, int]  # protocol events that are not exclusions (e.g. outputs_with_truncated_caption)


class CategorySummary(TypedDict):
    mean: float | None  # as in MetricSummary, over the samples of the category
    stderr: float | None
    ci95: list[float] | None
    n_samples: int


class Counts(TypedDict):
    samples: int  # samples in the run (incl. unscored intermediate turns)
    scored_samples: int  # samples whose outputs are scored
    expected_images: int  # scored_samples * images_per_sample
    scored_images: int  # images with a scores line
    failed_samples: int  # samples whose generation failed and whose images are still missing (see failures)


class Failures(TypedDict):
    count: int  # failed samples, once each, over every failures*.jsonl (run, shards, merge)
    reasons: dict[str, int]  # failure reason -> number of samples


class DataIdentity(TypedDict):
    ids_sha256: str  # SHA-256 of the run's sample ids, newline-joined in sample order
    content_sha256: str | None  # SHA-256 of "<id> <sample digest>" lines: same value = same prompts, images, references
    data_root: str | None  # the --data-root the run was generated from (None: the default data folder or HF cache)


class Provenance(TypedDict):
    mige_bench_version: str  # installed package version
    git_sha: str | None  # commit of the mige-bench checkout, when run from one
    packages: dict[str, str | None]  # versions of the libraries that can move a number
    python: str  # interpreter version
    platform: str  # OS and machine
    data: DataIdentity  # which copy of the dataset was scored (per-sample digests are in scores.jsonl)
    backbones: dict[str, Any]  # per backbone: spec, resolved path, weight hash, preprocessing, comparable
    metric_models: dict[str, Any]  # per score column, models beyond the backbones (e.g. entity detector hashes)
    device: str  # device scoring ran on
    created_at: str  # UTC timestamp of this results file
    timings: dict[str, float]  # wall seconds per stage ("generate", "score")


class ResultsFile(TypedDict):
    schema_version: int  # version of this schema
    task_id: str  # "<name>@<protocol>[:<setting>]"
    task: dict[str, Any]  # the full frozen task definition (protocol, metric bindings, data source, version)
    model: dict[str, Any]  # {"name", "args", "settings"} of the generator
    seed: dict[str, Any]  # {"base", "rule"}: how every image's seed was derived
    images_per_sample: int  # outputs generated per sample
    comparable: bool  # False when any backbone is a smoke (random) model: numbers are NOT comparable to papers
    counts: Counts
    metrics: dict[str, MetricSummary]  # score column -> summary
    breakdown: dict[str, dict[str, dict[str, CategorySummary]]]  # metadata key -> category -> column -> summary
    failures: Failures
    provenance: Provenance


def _summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "stderr": None, "ci95": None, "n_samples": 0}
    stats = summarize(list(values))
    return {
        "mean": stats["mean"],
        "stderr": stats["stderr"],
        "ci95": None if stats["ci95_low"] is None else [stats["ci95_low"], stats["ci95_high"]],  # undefined at n = 1
        "n_samples": stats["n"],
    }


def per_sample_means(lines: Sequence[Mapping[str, Any]], column: str) -> dict[str, float]:
    """Sample id -> mean of the column's defined values over that sample's images (insertion-ordered by id)."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for line in sorted(lines, key=lambda line: (line["sample_id"], line["k"])):
        if column in line["scores"]:
            grouped[line["sample_id"]].append(line["scores"][column])
    return {sample_id: sum(values) / len(values) for sample_id, values in grouped.items()}


def aggregate(
    lines: Sequence[Mapping[str, Any]], metric_ids: Mapping[str, str], higher_is_better: Mapping[str, bool],
    breakdown_keys: Sequence[str],
) -> tuple[dict[str, MetricSummary], dict[str, dict[str, dict[str, CategorySummary]]]]:  # fmt: skip
    """Per-metric summaries and per-category breakdowns from score lines."""
    metrics: dict[str, MetricSummary] = {}
    for column, metric_id in metric_ids.items():
        means = per_sample_means(lines, column)
        counters: Counter[str] = Counter()
        for line in lines:
            counters.update(line.get("counters", {}).get(column, {}))
        metrics[column] = {
            "metric": metric_id,
            "higher_is_better": higher_is_better[column],
            **_summary(list(means.values())),  # type: ignore[typeddict-item]
            "n_images": sum(column in line["scores"] for line in lines),
            "excluded": dict(
                sorted(Counter(line["excluded"][column] for line in lines if column in line["excluded"]).items())
            ),
            "counters": dict(sorted(counters.items())),
        }
    breakdown: dict[str, dict[str, dict[str, CategorySummary]]] = {}
    category_of = {line["sample_id"]: line["metadata"] for line in lines}
    for key in breakdown_keys:
        categories = sorted({str(meta.get(key)) for meta in category_of.values() if meta.get(key) is not None})
        breakdown[key] = {}
        for category in categories:
            members = {sid for sid, meta in category_of.items() if str(meta.get(key)) == category}
            breakdown[key][category] = {
                column: _summary([v for sid, v in per_sample_means(lines, column).items() if sid in members])
                for column in metric_ids
            }  # type: ignore[misc]
    return metrics, breakdown


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_sha() -> str | None:
    """The commit of the checkout this package runs from (None for an installed wheel or without git)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def build_results(
    manifest: Mapping[str, Any],
    lines: Sequence[Mapping[str, Any]],
    failures: Sequence[Mapping[str, Any]],
    metric_classes: Mapping[str, Any],
    backbone_provenance: Mapping[str, Any],
    comparable: bool,
    device: str,
    timings: Mapping[str, float],
    scored_sample_count: int,
    metric_provenance: Mapping[str, Any] | None = None,
) -> ResultsFile:
    """Assembles the results file (see :class:`ResultsFile` for every key)."""
    task = manifest["task"]
    metric_ids = {column: binding["metric"] for column, binding in task["metrics"].items()}
    metrics, breakdown = aggregate(
        lines,
        metric_ids,
        {c: m.higher_is_better for c, m in metric_classes.items()},
        task.get("breakdown", []),
    )
    images_per_sample = manifest["images_per_sample"]
    return {
        "schema_version": SCHEMA_VERSION,
        "task_id": task["id"],
        "task": task,
        "model": manifest["model"],
        "seed": manifest["seed"],
        "images_per_sample": images_per_sample,
        "comparable": comparable,
        "counts": {
            "samples": manifest["samples"]["count"],
            "scored_samples": scored_sample_count,
            "expected_images": scored_sample_count * images_per_sample,
            "scored_images": len(lines),
            "failed_samples": len(failures),
        },
        "metrics": metrics,
        "breakdown": breakdown,
        "failures": {
            "count": len(failures),
            "reasons": dict(sorted(Counter(record["reason"] for record in failures).items())),
        },
        "provenance": {
            "mige_bench_version": package_versions()["mige-bench"] or "unknown",
            "git_sha": git_sha(),
            "packages": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "data": {
                "ids_sha256": manifest["samples"]["ids_sha256"],
                "content_sha256": manifest["samples"].get("content_sha256"),
                "data_root": manifest.get("data_root"),
            },
            "backbones": dict(backbone_provenance),
            "metric_models": dict(metric_provenance or {}),
            "device": device,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "timings": dict(timings),
        },
    }
