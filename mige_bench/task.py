"""``Task``: a benchmark under a named, frozen protocol, declared by a small YAML file in ``tasks/``.

A task file is plain data (no includes, templating or code). It is validated on load: unknown keys, wrong types and
unknown metrics or loaders are rejected with the file and key named. Its identity is ``<name>@<protocol>``, plus
``:<setting>`` for protocols with several settings (``magicbrush@official:final_turn``). ``version`` must be bumped
on any change that can move a number (logged in ``tasks/README.md``); results record the whole definition.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mige_bench.errors import MigeBenchError
from mige_bench.sample import SAMPLE_KINDS, SampleKind

logger = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent


def tasks_dir() -> Path:
    """The folder of bundled task YAML files: ``tasks/`` in a checkout, ``mige_bench/_tasks`` when installed."""
    installed = _PACKAGE_DIR / "_tasks"
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / "tasks"


@dataclass(frozen=True)
class MetricBinding:
    """One score column of a task: which metric computes it and its protocol arguments.

    Attributes:
        metric: Metric registry id (``dino``, ``clip_t``...).
        args: Keyword arguments for the metric (``against: target_image``, ``caption: output_caption``...).
    """

    metric: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A validated task definition (see the module docstring and ``tasks/README.md`` for every key)."""

    name: str
    protocol: str
    version: int
    kind: SampleKind
    loader: str
    metrics: Mapping[str, MetricBinding]
    primary_metric: str
    description: str = ""
    setting: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    images_per_sample: int = 1
    breakdown: tuple[str, ...] = ()
    backbones: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""
    source_file: str = ""

    @property
    def id(self) -> str:
        base = f"{self.name}@{self.protocol}"
        return f"{base}:{self.setting}" if self.setting else base

    def definition(self) -> dict[str, Any]:
        """The full protocol as plain data, written into every manifest and results file."""
        record = asdict(self)
        record["id"] = self.id
        record.pop("source_file")
        record["breakdown"] = list(self.breakdown)
        return record


# key -> (expected type(s), required)
_SCHEMA: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, True),
    "protocol": (str, True),
    "version": (int, True),
    "kind": (str, True),
    "loader": (str, True),
    "metrics": (dict, True),
    "primary_metric": (str, True),
    "description": (str, False),
    "setting": (str, False),
    "data": (dict, False),
    "images_per_sample": (int, False),
    "breakdown": (list, False),
    "backbones": (dict, False),
    "notes": (str, False),
}


def _fail(source: str, message: str) -> MigeBenchError:
    return MigeBenchError(f"{source}: {message}")


def _check_keys(source: str, where: str, keys: list[str], allowed: list[str]) -> None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(source, f"unknown key {key!r} in {where}{hint}; allowed: {', '.join(allowed)}.")


def parse_task(raw: Any, source: str = "<task>") -> Task:
    """Validates a parsed YAML document and builds the :class:`Task`.

    Raises:
        MigeBenchError: naming ``source`` and the offending key for any schema violation.
    """
    from mige_bench.loaders import LOADERS, data_keys
    from mige_bench.metrics import METRICS

    if not isinstance(raw, dict):
        raise _fail(source, "a task file must be a YAML mapping of keys to values.")
    _check_keys(source, "the task", list(raw), list(_SCHEMA))
    for key, (expected, required) in _SCHEMA.items():
        if key not in raw:
            if required:
                raise _fail(source, f"missing required key {key!r}.")
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            names = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
            raise _fail(source, f"key {key!r} must be of type {names}, got {type(value).__name__} ({value!r}).")
    if raw["version"] < 1:
        raise _fail(source, "'version' must be a positive integer.")
    if raw["kind"] not in SAMPLE_KINDS:
        raise _fail(source, f"'kind' must be one of {', '.join(SAMPLE_KINDS)}, got {raw['kind']!r}.")
    if raw["loader"] not in LOADERS:
        raise _fail(source, f"unknown loader {raw['loader']!r}; known: {', '.join(sorted(LOADERS))}.")
    allowed_data = data_keys(raw["loader"])
    if allowed_data is not None:
        _check_keys(source, "data", [str(key) for key in raw.get("data", {})], sorted(allowed_data))
    images_per_sample = raw.get("images_per_sample", 1)
    if images_per_sample < 1:
        raise _fail(source, "'images_per_sample' must be at least 1.")

    metrics: dict[str, MetricBinding] = {}
    for column, binding in raw["metrics"].items():
        binding = dict(binding or {})
        metric = binding.pop("metric", column)
        if metric not in METRICS:
            close = difflib.get_close_matches(str(metric), list(METRICS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(
                source,
                f"metric {column!r} uses unknown metric {metric!r}{hint}; known: {', '.join(METRICS)}.",
            )
        metrics[str(column)] = MetricBinding(metric=metric, args=binding)
    if not metrics:
        raise _fail(source, "'metrics' must name at least one metric.")
    if raw["primary_metric"] not in metrics:
        raise _fail(source, f"'primary_metric' {raw['primary_metric']!r} is not one of the task's metrics.")
    if not all(isinstance(item, str) for item in raw.get("breakdown", [])):
        raise _fail(source, "'breakdown' must be a list of metadata field names.")

    return Task(
        name=raw["name"],
        protocol=raw["protocol"],
        version=raw["version"],
        kind=raw["kind"],
        loader=raw["loader"],
        metrics=metrics,
        primary_metric=raw["primary_metric"],
        description=raw.get("description", ""),
        setting=raw.get("setting"),
        data=raw.get("data", {}),
        images_per_sample=images_per_sample,
        breakdown=tuple(raw.get("breakdown", [])),
        backbones={str(k): str(v) for k, v in raw.get("backbones", {}).items()},
        notes=raw.get("notes", ""),
        source_file=source,
    )


def load_task_file(path: Path) -> Task:
    """Reads and validates one task YAML file (``yaml.safe_load``: no Python objects from YAML)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise _fail(str(path), f"not valid YAML ({error}).") from error
    except (OSError, UnicodeDecodeError) as error:
        raise _fail(str(path), f"cannot read the task file ({error}).") from error
    return parse_task(raw, source=str(path))


def available_tasks(folder: Path | None = None) -> dict[str, Task]:
    """All task definitions found by walking ``folder`` (default :func:`tasks_dir`), keyed by task id."""
    folder = folder or tasks_dir()
    tasks: dict[str, Task] = {}
    for path in sorted(folder.glob("*.yaml")):
        task = load_task_file(path)
        if task.id in tasks:
            raise _fail(str(path), f"task id {task.id!r} is already defined by {tasks[task.id].source_file}.")
        tasks[task.id] = task
    return tasks


def get_task(spec: str) -> Task:
    """Resolves ``spec``: a task id (``emu_edit@mige``), a unique task name (``emu_edit``), or a YAML file path."""
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise MigeBenchError(f"Task file {spec} not found.")
        return load_task_file(path)
    tasks = available_tasks()
    if spec in tasks:
        return tasks[spec]
    matches = [task_id for task_id in tasks if task_id.split("@")[0] == spec or task_id.split(":")[0] == spec]
    if len(matches) == 1:
        return tasks[matches[0]]
    if matches:
        raise MigeBenchError(f"Task {spec!r} is ambiguous: choose one of {', '.join(sorted(matches))}.")
    close = difflib.get_close_matches(spec, list(tasks), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise MigeBenchError(f"Unknown task {spec!r}.{hint} Run `mige-bench ls tasks` for the list.")
