"""Results files and run folders built in code, following the schema of ``mige_bench.results``.

Every value is fixed (dates, shas, weight hashes), so rendered leaderboards are byte-for-byte reproducible.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mige_bench.run_folder import write_json_atomic

TASK: dict[str, Any] = {
    "id": "toy@mige",
    "name": "toy",
    "protocol": "mige",
    "setting": None,
    "version": 1,
    "kind": "edit",
    "loader": "demo",
    "description": "A toy editing task built in the tests.",
    "notes": "",
    "data": {},
    "images_per_sample": 1,
    "primary_metric": "l1",
    "breakdown": ["category"],
    "backbones": {"dino": "facebook/dino-vits16"},
    "metrics": {
        "l1": {"metric": "l1", "args": {"against": "target_image"}},
        "dino": {"metric": "dino", "args": {"against": "target_image"}},
    },
}
DIRECTIONS = {"l1": False, "dino": True}
# A caption that must come out escaped wherever a page shows it.
HOSTILE_CAPTION = '<script>alert("caption")</script>'
DINO_WEIGHTS = "d" * 64


def summary(mean: float | None, low: float | None, high: float | None, n: int) -> dict[str, Any]:
    return {"mean": mean, "stderr": None, "ci95": None if low is None else [low, high], "n_samples": n}


def results_file(
    model: str,
    metrics: Mapping[str, tuple[float, float, float]],
    *,
    n: int = 4,
    failed: int = 0,
    breakdown: Mapping[str, Mapping[str, tuple[float, float, float, int]]] | None = None,
    version: int = 1,
    dino_weights: str = DINO_WEIGHTS,
    metric_args: Mapping[str, Any] | None = None,
    task_id: str = "toy@mige",
    created_at: str = "2025-03-01T12:00:00+00:00",
) -> dict[str, Any]:
    """A results file; ``metrics``: column -> (mean, ci low, ci high); ``breakdown``: category -> l1 values.

    ``n`` samples are meant to be scored; ``failed`` of them failed to generate, so the metrics cover ``n - failed``.
    """
    task = copy.deepcopy(TASK)
    task["version"] = version
    task["id"] = task_id
    if metric_args:
        task["metrics"]["l1"]["args"] = dict(metric_args)
    return {
        "schema_version": 1,
        "task_id": task_id,
        "task": task,
        "model": {"name": model, "args": {}, "settings": {}},
        "seed": {"base": 0, "rule": "fixed"},
        "images_per_sample": 1,
        "comparable": True,
        "counts": {
            "samples": n,
            "scored_samples": n,
            "expected_images": n,
            "scored_images": n - failed,
            "failed_samples": failed,
        },
        "metrics": {
            column: {
                "metric": column,
                "higher_is_better": DIRECTIONS[column],
                **summary(*values, n - failed),
                "n_images": n - failed,
                "excluded": {},
                "counters": {},
            }
            for column, values in metrics.items()
        },
        "breakdown": {
            "category": {
                category: {"l1": summary(mean, low, high, count)}
                for category, (mean, low, high, count) in (breakdown or {}).items()
            }
        },
        "failures": {"count": failed, "reasons": {"RuntimeError: out of memory": failed} if failed else {}},
        "provenance": {
            "mige_bench_version": "0.1.0",
            "git_sha": "0123456789abcdef",
            "packages": {},
            "python": "3.11.0",
            "platform": "test",
            "backbones": {
                "dino": {
                    "spec": "facebook/dino-vits16",
                    "weight_sha256": dino_weights,
                    "preprocessing": "resize 256 -> crop 224",
                    "resolved_path": "/somewhere/on/one/machine",
                    "used": True,
                }
            },
            "device": "cpu",
            "created_at": created_at,
            "timings": {},
        },
    }


def add_row_file(root: Path, name: str, results: Mapping[str, Any], task_folder: str = "toy@mige") -> Path:
    path = root / "results" / task_folder / f"{name}.json"
    write_json_atomic(path, results)
    return path


def write_run(
    run_dir: Path,
    results: Mapping[str, Any],
    scores: Mapping[str, Mapping[str, float]],
    categories: Mapping[str, str] | None = None,
    digests: Mapping[str, str] | None = None,
) -> Path:
    """A run folder with ``results.json`` and a ``scores.jsonl`` of one image per sample; returns the results path.

    ``digests`` (sample id -> data digest) fill the lines' ``sample_sha256``; without them the lines have none.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "scores.jsonl").open("w", encoding="utf-8") as handle:
        for sample_id, values in scores.items():
            line = {
                "sample_id": sample_id,
                "k": 0,
                "image": f"images/{sample_id}.png",
                "metadata": {"category": (categories or {}).get(sample_id, "all")},
                "scores": dict(values),
                "excluded": {},
            }
            if digests is not None:
                line["sample_sha256"] = digests[sample_id]
            handle.write(json.dumps(line) + "\n")
    write_json_atomic(run_dir / "results.json", results)
    return run_dir / "results.json"
