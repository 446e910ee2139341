"""The two stages of a run — generate images, then score them — joined only by the run folder.

``generate`` writes images + manifest; ``score`` reads images and writes scores and results. Either runs alone:
re-scoring after a metric fix never regenerates, and a folder of someone else's images is just another generator.
Both resume: finished images and score lines are kept, and a folder whose manifest differs from the request is
refused (stale images are the classic silent error).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mige_bench import run_folder as rf
from mige_bench.errors import MigeBenchError
from mige_bench.images import MAX_PIXELS, MIN_SIDE, ImageRef, save_png_atomic, to_rgb
from mige_bench.loaders import LOADERS
from mige_bench.metrics import METRICS
from mige_bench.metrics.base import Excluded, Metric
from mige_bench.models import MODELS
from mige_bench.models.base import Generator
from mige_bench.registry import resolve
from mige_bench.results import build_results
from mige_bench.sample import Sample, output_stem, sample_digests
from mige_bench.task import Task, get_task, parse_task

logger = logging.getLogger(__name__)

MAX_DECODE_WORKERS = 4
"""Most worker processes that decode and crop images during scoring (more rarely pays: the encoders are the floor)."""


# ----------------------------------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    """What to generate: the fields that define a run (all recorded in the manifest)."""

    task: str
    model: str
    model_args: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    limit: int | None = None
    images_per_sample: int | None = None
    data_root: Path | None = None

    def __post_init__(self) -> None:
        # Refused here, not only by the CLI: a negative limit would act as a Python slice and a zero count would fall
        # back to the task default, both silently.
        for name, value in (("limit", self.limit), ("images_per_sample", self.images_per_sample)):
            if value is not None and value < 1:
                raise MigeBenchError(f"{name} must be at least 1 (got {value}); leave it unset for the task default.")


@dataclass
class ExecutionOptions:
    """How to run: settings that cannot change a number, so they are not part of the manifest identity."""

    batch_size: int = 4
    """Images per model call."""
    score_batch_size: int = 32
    """Output images per scoring chunk (encoder batches; one scores.jsonl flush per chunk)."""
    device: str = "cpu"
    overwrite: bool = False
    allow_failures: int = 0
    progress: bool = True
    shard: tuple[int, int] | None = None
    """``(i, n)``: generate only shard ``i`` of ``n`` (see :func:`shard_samples`); ``None`` = everything."""

    def __post_init__(self) -> None:
        for name, value, least in (
            ("batch_size", self.batch_size, 1),
            ("score_batch_size", self.score_batch_size, 1),
            ("allow_failures", self.allow_failures, 0),
        ):
            if value < least:
                raise MigeBenchError(f"{name} must be at least {least} (got {value}).")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise MigeBenchError(f"shard {self.shard}: expected (i, n) with 0 <= i < n.")


def derive_seed(base_seed: int, sample_id: str, k: int) -> int:
    """The seed of output ``k`` of ``sample_id``: a hash of (base seed, sample id, k), in [0, 2**63).

    Independent of batch size, order and sharding by construction: no image's seed depends on any other image.
    """
    digest = hashlib.sha256(f"{base_seed}:{sample_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def shard_from_environment() -> tuple[int, int] | None:
    """``(rank, world size)`` when launched by ``torchrun`` / ``accelerate launch`` with several processes."""
    import os

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and "RANK" in os.environ:
        return int(os.environ["RANK"]), world_size
    return None


def device_for_process(device: str) -> str:
    """A bare ``cuda`` becomes ``cuda:<LOCAL_RANK>`` under a multi-process launcher, so ranks use their own GPU."""
    import os

    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def shard_samples(samples: Sequence[Sample], shard: tuple[int, int]) -> list[Sample]:
    """The samples of shard ``i`` of ``n``: chains (multi-turn sessions) are dealt round-robin, never split."""
    index, count = shard
    by_id = {sample.id: sample for sample in samples}

    def root(sample: Sample) -> str:
        while sample.chain_from and sample.chain_from in by_id:
            sample = by_id[sample.chain_from]
        return sample.id

    roots = list(dict.fromkeys(root(sample) for sample in samples))
    mine = {root_id for position, root_id in enumerate(roots) if position % count == index}
    return [sample for sample in samples if root(sample) in mine]


# ----------------------------------------------------------------------------------------------------------------------
# Samples and generators
# ----------------------------------------------------------------------------------------------------------------------


def load_samples(task: Task, data_root: Path | None, limit: int | None = None) -> list[Sample]:
    """Loads a task's samples; ``limit`` keeps the first N scored samples plus the earlier turns they chain from."""
    loader = resolve("loader", task.loader, LOADERS)
    samples: list[Sample] = loader(task, data_root)
    if not samples:
        raise MigeBenchError(f"Task {task.id} loaded no samples from {data_root or task.data}; check the data path.")
    ids = [sample.id for sample in samples]
    duplicates = [sample_id for sample_id, count in Counter(ids).items() if count > 1]
    if duplicates:
        raise MigeBenchError(f"Task {task.id}: duplicate sample ids {duplicates[:5]} from loader {task.loader}.")
    return samples if limit is None else limit_samples(samples, limit)


def limit_samples(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """The first ``limit`` scored samples plus the earlier turns they chain from, in their order.

    A smaller limit always selects a subset of what a larger one selects, so a run can be extended (see
    :func:`extends_limit`).
    """
    by_id = {sample.id: sample for sample in samples}
    keep: set[str] = set()
    for sample in [s for s in samples if s.scored][:limit]:
        chain: Sample | None = sample
        while chain is not None and chain.id not in keep:
            keep.add(chain.id)
            chain = by_id.get(chain.chain_from) if chain.chain_from else None
    return [sample for sample in samples if sample.id in keep]


def generator_factory(model: str, model_args: Mapping[str, str], device: str) -> Callable[[], Generator]:
    """Checks a registered (or ``module:Class``) generator and its ``--model-args``; returns what loads it.

    Everything that can be wrong with the request (unknown model, not a generator class, unknown or missing
    arguments) is refused here, before any weights load; calling the returned factory builds the model.
    """
    generator_class = resolve("model", model, MODELS)
    if not (inspect.isclass(generator_class) and issubclass(generator_class, Generator)):
        raise MigeBenchError(
            f"Model {model!r} is a {type(generator_class).__name__}, not a subclass of "
            "mige_bench.models.base.Generator; --model takes a registered name or module:Class."
        )
    parameters = inspect.signature(generator_class).parameters
    arguments = dict(model_args)
    if "device" in parameters:
        arguments.setdefault("device", device)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [key for key in arguments if key not in parameters and not accepts_any]
    if unknown:
        known = [name for name in parameters if name != "self"]
        raise MigeBenchError(
            f"Model {model!r} does not take argument(s) {', '.join(unknown)}; it accepts: {', '.join(known) or 'none'}."
        )
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [
        name
        for name, parameter in parameters.items()
        if parameter.kind in named and parameter.default is inspect.Parameter.empty and name not in arguments
    ]
    if missing:
        raise MigeBenchError(
            f"Model {model!r} needs argument(s) {', '.join(missing)}: pass --model-args "
            f"{','.join(f'{name}=VALUE' for name in missing)}"
        )
    return functools.partial(generator_class, **arguments)


def check_generator_fits(generator: Generator, model: str, task: Task, samples: Sequence[Sample]) -> None:
    """Refuses a task whose samples are of a kind the loaded model cannot run, before anything is generated.

    Without it every sample would fail on its own and the run would end as a folder of failure records.
    """
    unfit = sorted({sample.kind for sample in samples} - set(generator.task_kinds))
    if unfit:
        raise MigeBenchError(
            f"Model {model!r} cannot run task {task.id}: its samples are of kind {', '.join(unfit)}, and the model "
            f"runs {', '.join(generator.task_kinds)} only. Pick a task of those kinds or another model."
        )


def check_device(device: str) -> None:
    """Refuses a device torch cannot use on this machine, before any model or backbone loads."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise MigeBenchError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise MigeBenchError(
                f"--device {device}: no CUDA GPU is usable here (torch.cuda.is_available() is False); use --device cpu."
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise MigeBenchError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible (cuda:0 onwards)."
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise MigeBenchError(f"--device {device}: Apple MPS is not available here; use --device cpu.")


def _validated_output(image: Any, label: str) -> Image.Image:
    """Checks one generated image: a PIL image of sane size that is not blank black; returns it as RGB."""
    if not isinstance(image, Image.Image):
        raise MigeBenchError(f"{label}: the model returned {type(image).__name__}, not a PIL image.")
    width, height = image.size
    if min(width, height) < MIN_SIDE or width * height > MAX_PIXELS:
        raise MigeBenchError(f"{label}: the model returned a {width}x{height} image, outside the accepted size range.")
    image = to_rgb(image, label)
    if not np.asarray(image).any():
        raise MigeBenchError(f"{label}: the output is entirely black (a safety filter or NaN latents produce this).")
    return image


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1: generate
# ----------------------------------------------------------------------------------------------------------------------


SETTINGS_KEY = "model.settings"
"""The one manifest key only a loaded generator can fill (see :func:`check_run_folder`)."""


def samples_identity(digests: Mapping[str, str]) -> dict[str, Any]:
    """The manifest's ``samples`` entry from the per-sample digests (:func:`~mige_bench.sample.sample_digests`), in
    sample order: how many, which ids, and which content (a corrected or re-encoded dataset image changes it)."""
    content = "\n".join(f"{sample_id} {digest}" for sample_id, digest in digests.items())
    return {
        "count": len(digests),
        "ids_sha256": hashlib.sha256("\n".join(digests).encode()).hexdigest(),
        "content_sha256": hashlib.sha256(content.encode()).hexdigest(),
    }


def build_manifest(
    task: Task, request: GenerationRequest, digests: Mapping[str, str], settings: Mapping[str, Any] | None
) -> dict:
    """The manifest: everything that defines the run's images. A resumed run must match it exactly.

    ``digests`` are the task's per-sample digests in sample order; ``settings`` are the generator's resolved
    settings, ``None`` before the model is loaded (a partial manifest, good for :func:`check_run_folder` with
    ``settings_known=False`` only).
    """
    images_per_sample = task.images_per_sample if request.images_per_sample is None else request.images_per_sample
    return {
        "schema_version": 1,
        "task": task.definition(),
        "model": {
            "name": request.model,
            "args": dict(request.model_args),
            "settings": None if settings is None else dict(settings),
        },
        "seed": {"base": request.seed, "rule": "sha256('<base>:<sample_id>:<k>')[:8] >> 1"},
        "images_per_sample": images_per_sample,
        "limit": request.limit,
        "data_root": str(request.data_root) if request.data_root else None,
        "samples": samples_identity(digests),
    }


LOCATION_KEYS = frozenset({"data_root"})
"""Manifest keys that record where things were, not what they were: the data is identified by its content digest
(``samples.content_sha256``), so a run resumed, scored or merged with the data in another folder (another machine's
path) is the same run. The manifest keeps the latest location, which ``score`` uses to find the data."""


def run_differences(recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """The manifest keys in which two runs differ (dotted), leaving out :data:`LOCATION_KEYS`."""
    return [key for key in rf.manifest_differences(recorded, requested) if key not in LOCATION_KEYS]


LIMIT_KEYS = frozenset({"limit", "samples.count", "samples.ids_sha256", "samples.content_sha256"})
"""The manifest keys a larger ``--limit`` changes; a run differing only in these can be extended."""


def extends_limit(run_dir: Path, samples: Sequence[Sample], digests: Mapping[str, str]) -> bool:
    """Whether the run in ``run_dir`` was made with a smaller ``--limit`` over exactly these samples' data.

    True when the recorded limit, applied to ``samples`` (this request's, in order), selects fewer samples than this
    request, and exactly the recorded ones with the recorded content: its images are then images of this run, and
    only the new samples need generating.
    """
    manifest_path = run_dir / rf.MANIFEST
    if not manifest_path.is_file():
        return False
    recorded = rf.read_json(manifest_path)
    if not isinstance(recorded.get("limit"), int):
        return False
    earlier = limit_samples(samples, recorded["limit"])
    return len(earlier) < len(samples) and samples_identity(
        {sample.id: digests[sample.id] for sample in earlier}
    ) == recorded.get("samples")


def check_run_folder(
    run_dir: Path,
    manifest: Mapping[str, Any],
    overwrite: bool,
    settings_known: bool = True,
    extending: bool = False,
) -> list[str]:
    """Refuses a folder that holds a different run, unless ``overwrite``; returns the differing manifest keys.

    With ``settings_known=False`` the generator's settings are left out of the comparison, so a mismatch in anything
    else is caught before the model is loaded; :func:`prepare_run_folder` then checks the whole manifest. With
    ``extending`` (see :func:`extends_limit`) the keys a larger ``--limit`` changes are not differences.
    """
    manifest_path = run_dir / rf.MANIFEST
    if not manifest_path.is_file():
        return []
    recorded = rf.read_json(manifest_path)
    differences = run_differences(recorded, manifest)
    if not settings_known:
        differences = [key for key in differences if key != SETTINGS_KEY and not key.startswith(f"{SETTINGS_KEY}.")]
    if extending:
        differences = [key for key in differences if key not in LIMIT_KEYS]
    if differences and not overwrite:
        hint = ""
        if "limit" in differences and set(differences) <= LIMIT_KEYS:
            hint = " A run can be extended only with a larger --limit (or none), over the same data, without --shard."
        elif "content_sha256" not in recorded.get("samples", {}):
            hint = " (It was made by an older mige-bench, which recorded no digest of the data.)"
        raise MigeBenchError(
            f"{run_dir} holds a different run (differs in: {', '.join(differences)}); use another --out, or "
            f"--overwrite to discard its images and scores.{hint}"
        )
    return differences


def prepare_run_folder(run_dir: Path, manifest: Mapping[str, Any], overwrite: bool, extending: bool = False) -> None:
    """Creates the folder, or checks that an existing one was made by the same request (else refuses).

    Extending a run made with a smaller ``--limit`` keeps its images, failure records and score lines; its results
    and shard markers no longer describe the run and are removed (scoring writes new results).
    """
    if check_run_folder(run_dir, manifest, overwrite, extending=extending):
        logger.warning("--overwrite: discarding the previous run in %s", run_dir)
        for name in (rf.SCORES, rf.RESULTS):
            (run_dir / name).unlink(missing_ok=True)
        for stale in [*run_dir.glob("failures*.jsonl"), *run_dir.glob("timings*.json"), *run_dir.glob("shards/*")]:
            stale.unlink()
        for image in (run_dir / rf.IMAGES).glob("*.png"):
            image.unlink()
    elif extending:
        recorded = rf.read_json(run_dir / rf.MANIFEST)["samples"]["count"]
        logger.warning(
            "%s: extending the run from %d to %d samples; its images are kept", run_dir, recorded,
            manifest["samples"]["count"],
        )  # fmt: skip
        (run_dir / rf.RESULTS).unlink(missing_ok=True)
        for marker in run_dir.glob("shards/*"):
            marker.unlink()
    rf.write_json_atomic(run_dir / rf.MANIFEST, manifest)


def _generation_order(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Groups samples into waves: a sample that chains from another comes in a later wave than its parent."""
    by_id = {sample.id: sample for sample in samples}
    depth: dict[str, int] = {}

    def depth_of(sample: Sample) -> int:
        if sample.id not in depth:
            parent = by_id.get(sample.chain_from) if sample.chain_from else None
            if sample.chain_from and parent is None:
                raise MigeBenchError(f"Sample {sample.id} chains from {sample.chain_from}, which is not in the task.")
            depth[sample.id] = 0 if parent is None else depth_of(parent) + 1
        return depth[sample.id]

    waves: dict[int, list[Sample]] = {}
    for sample in samples:
        waves.setdefault(depth_of(sample), []).append(sample)
    return [waves[level] for level in sorted(waves)]


def _batches(samples: Sequence[Sample], images_per_sample: int, batch_size: int) -> Iterator[list[Sample]]:
    """Whole samples per batch (all k outputs of a sample together), about ``batch_size`` images per batch."""
    per_batch = max(1, batch_size // images_per_sample)
    for start in range(0, len(samples), per_batch):
        yield list(samples[start : start + per_batch])


LOGGED_FAILURES = 10
"""Generation failures logged one by one; later ones are only recorded (see :func:`generate_images`)."""

LISTED_REASONS = 5
"""Distinct failure reasons spelled out in the error that ends a run with too many failures."""


def generate_images(
    run_dir: Path,
    samples: Sequence[Sample],
    generator: Generator,
    base_seed: int,
    images_per_sample: int,
    options: ExecutionOptions,
) -> list[dict[str, str]]:
    """Generates every missing output image; returns the failures (also written to ``failures.jsonl``).

    Images already on disk are kept (resume). A batch that raises is retried one sample at a time, so one bad sample
    fails alone, with its reason recorded; nothing is skipped silently.
    """
    images_dir = run_dir / rf.IMAGES
    images_dir.mkdir(parents=True, exist_ok=True)
    for leftover in images_dir.glob(".*.tmp"):  # half-written by a killed process; never under a final name
        leftover.unlink()
    failures_file = rf.failures_path(run_dir, options.shard)
    # Failed samples are retried, so this pass's old reasons are stale. Other shards' files are left alone: their
    # records stop counting once the images exist (see current_failures).
    failures_file.unlink(missing_ok=True)
    failures: list[dict[str, str]] = []
    failed_ids: set[str] = set()

    def record_failure(sample: Sample, reason: str) -> None:
        # The first few are logged; a run where everything fails (a folder of misnamed images) would otherwise print
        # thousands of lines. Every failure is in the failures file and the final error.
        if len(failures) < LOGGED_FAILURES:
            logger.warning("generation failed for %s: %s", sample.id, reason)
        elif len(failures) == LOGGED_FAILURES:
            logger.warning("more samples fail; further failures are not logged, all are recorded in %s", failures_file)
        record = {"sample_id": sample.id, "reason": reason}
        failures.append(record)
        failed_ids.add(sample.id)
        rf.append_jsonl(failures_file, [record])

    def output_path(sample: Sample, k: int) -> Path:
        return images_dir / f"{sample.output_name(k, images_per_sample)}.png"

    def with_chained_source(sample: Sample, k: int) -> Sample:
        if not sample.chain_from:
            return sample
        parent_output = images_dir / f"{output_stem(sample.chain_from, k, images_per_sample)}.png"
        inputs = dataclasses.replace(sample.inputs, source_image=ImageRef(path=parent_output))
        return dataclasses.replace(sample, inputs=inputs)

    def generate_batch(batch: list[Sample]) -> None:
        requests = [(with_chained_source(s, k), k) for s in batch for k in range(images_per_sample)]
        seeds = [derive_seed(base_seed, sample.id, k) for sample, k in requests]
        images = generator.generate([sample for sample, _ in requests], seeds)
        if len(images) != len(requests):
            raise MigeBenchError(f"model returned {len(images)} images for {len(requests)} requests")
        checked = [
            _validated_output(image, f"{sample.id} output {k}")
            for image, (sample, k) in zip(images, requests, strict=True)
        ]
        for image, (sample, k) in zip(checked, requests, strict=True):
            save_png_atomic(image, output_path(sample, k))

    total = len(samples) * images_per_sample
    label = "generate" if options.shard is None else f"generate [shard {options.shard[0]}/{options.shard[1]}]"
    with tqdm(total=total, desc=label, unit="img", disable=not options.progress) as progress:
        for wave in _generation_order(samples):
            pending = []
            for sample in wave:
                if sample.chain_from in failed_ids:
                    record_failure(sample, f"previous turn {sample.chain_from} failed")
                elif all(output_path(sample, k).is_file() for k in range(images_per_sample)):
                    progress.update(images_per_sample)
                else:
                    pending.append(sample)
            for batch in _batches(pending, images_per_sample, options.batch_size):
                try:
                    generate_batch(batch)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as batch_error:  # retried per sample below, each failure recorded with its reason
                    if len(batch) == 1:
                        record_failure(batch[0], f"{type(batch_error).__name__}: {batch_error}")
                    else:
                        logger.info("batch failed (%s); retrying its samples one by one", batch_error)
                        for sample in batch:
                            try:
                                generate_batch([sample])
                            except (KeyboardInterrupt, SystemExit):
                                raise
                            except Exception as error:
                                record_failure(sample, f"{type(error).__name__}: {error}")
                progress.update(len(batch) * images_per_sample)
    return failures


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2: score
# ----------------------------------------------------------------------------------------------------------------------


def current_failures(run_dir: Path, images_per_sample: int) -> list[dict[str, Any]]:
    """The run's failed samples now: one record per sample, ordered by id, from every ``failures*.jsonl``.

    A sample is failed while some file (the run's, a shard's, a merged source's) records it and one of its output
    images is missing; once the images exist, whoever generated them, the old record no longer counts. A sample
    recorded several times counts once, with its latest reason. The scoring todo list, the results counts and the
    failure check all read failures through this function.
    """
    records = rf.read_failure_records(run_dir)
    return [records[sample_id] for sample_id in sorted(records) if _lacks_output(run_dir, sample_id, images_per_sample)]


def _lacks_output(run_dir: Path, sample_id: str, images_per_sample: int) -> bool:
    images = run_dir / rf.IMAGES
    return not all(
        (images / f"{output_stem(sample_id, k, images_per_sample)}.png").is_file() for k in range(images_per_sample)
    )


def task_from_manifest(manifest: Mapping[str, Any]) -> Task:
    """The task a run was generated under, rebuilt from the manifest's frozen definition.

    The current YAML of the same id must have the same version: scoring an old run under a changed protocol would
    silently mix definitions.
    """
    definition = dict(manifest["task"])
    recorded = parse_task(_definition_as_yaml(definition), source=f"manifest task {definition['id']}")
    try:
        current = get_task(recorded.id)
    except MigeBenchError:
        return recorded  # a task file passed by path, or removed since: the frozen definition is authoritative
    if current.version != recorded.version:
        raise MigeBenchError(
            f"The run was generated under {recorded.id} version {recorded.version}, but the installed task is version "
            f"{current.version}; regenerate the run (the protocol changed in a way that can move numbers)."
        )
    return recorded


def _definition_as_yaml(definition: Mapping[str, Any]) -> dict[str, Any]:
    raw = {key: value for key, value in definition.items() if key != "id"}
    raw["metrics"] = {column: {"metric": b["metric"], **b["args"]} for column, b in definition["metrics"].items()}
    return {key: value for key, value in raw.items() if value is not None}


def scoring_key(task: Task, backbone_provenance: Mapping[str, Any], metric_provenance: Mapping[str, Any]) -> str:
    """Identifies a scoring configuration: score lines made under another one are never reused."""
    payload = {"metrics": task.definition()["metrics"], "backbones": backbone_provenance, "extra": metric_provenance}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def metric_provenance(metrics: Mapping[str, Metric]) -> dict[str, Any]:
    """Per score column, what its metric uses beyond the shared backbones (only columns that use something)."""
    return {column: record for column, metric in metrics.items() if (record := metric.provenance())}


def build_metrics(task: Task, backbones: Any) -> dict[str, Metric]:
    """One metric instance per score column of the task, sharing the backbones."""
    metrics: dict[str, Metric] = {}
    for column, binding in task.metrics.items():
        metric_class = resolve("metric", binding.metric, METRICS)
        try:
            metrics[column] = metric_class(backbones, **binding.args)
        except TypeError as error:
            raise MigeBenchError(
                f"{task.source_file or task.id}: metric {column!r} has bad arguments ({error})."
            ) from error
    return metrics


def score_images(
    run_dir: Path,
    task: Task,
    samples: Sequence[Sample],
    digests: Mapping[str, str],
    images_per_sample: int,
    backbones: Any,
    options: ExecutionOptions,
    decode_workers: int | None = None,
    metrics: Mapping[str, Metric] | None = None,
) -> list[dict[str, Any]]:
    """Scores every output image of the scored samples; returns all score lines (also in ``scores.jsonl``).

    Each line carries its sample's digest (``sample_sha256``, from ``digests``), so two runs can be checked to have
    scored the same data sample by sample (see :mod:`mige_bench.compare`).

    Lines from an earlier, interrupted pass with the same scoring configuration are kept; the rest are computed in
    chunks of ``score_batch_size`` images and appended as they finish. Failed samples (:func:`current_failures`) are
    not scored (they are counted in the results); any other missing image is an error naming every missing file.

    Each chunk's images go through each encoder once, in batches, however many metrics use them; images are decoded
    and cropped in ``decode_workers`` processes (default: one per core, at most :data:`MAX_DECODE_WORKERS`) one chunk
    ahead, and reference embeddings come from the backbones' embedding cache when they were computed before.
    """
    metrics = metrics if metrics is not None else build_metrics(task, backbones)
    key = scoring_key(task, backbones.provenance(), metric_provenance(metrics))
    scores_path = run_dir / rf.SCORES
    previous = rf.read_jsonl(scores_path)
    kept = [line for line in previous if line.get("scoring_key") == key]
    if len(kept) != len(previous):
        logger.warning(
            "%s: discarding %d of %d score lines: they were made under a different scoring setup (metric bindings, "
            "backbone weights or metric models changed); those images are scored again",
            scores_path,
            len(previous) - len(kept),
            len(previous),
        )
        scores_path.unlink()
        rf.append_jsonl(scores_path, kept)
    done = {(line["sample_id"], line["k"]) for line in kept}
    failed = {record["sample_id"] for record in current_failures(run_dir, images_per_sample)}

    todo: list[tuple[Sample, int, Path]] = []
    missing: list[str] = []
    for sample in samples:
        if not sample.scored or sample.id in failed:
            continue
        for k in range(images_per_sample):
            path = run_dir / rf.IMAGES / f"{sample.output_name(k, images_per_sample)}.png"
            if (sample.id, k) in done:
                continue
            if not path.is_file():
                missing.append(path.name)
            todo.append((sample, k, path))
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise MigeBenchError(
            f"{run_dir / rf.IMAGES}: {len(missing)} output image(s) missing: {shown}. Run generation again to resume, "
            "or score a complete folder."
        )

    chunk_size = max(1, options.score_batch_size)
    chunks = [todo[start : start + chunk_size] for start in range(0, len(todo), chunk_size)]
    workers = min(MAX_DECODE_WORKERS, os.cpu_count() or 1) if decode_workers is None else decode_workers
    features = backbones.features
    with (
        features.decoding_in_workers(workers if chunks else 0),
        tqdm(total=len(todo), desc="score", unit="img", disable=not options.progress) as progress,
    ):
        # Decoding runs one chunk ahead in the workers while the encoders work on the current chunk.
        requests = _image_requests(chunks[0], metrics) if chunks else []
        features.prefetch(requests)
        for index, chunk in enumerate(chunks):
            upcoming = _image_requests(chunks[index + 1], metrics) if index + 1 < len(chunks) else []
            features.prefetch(upcoming)
            features.precompute(requests)
            lines = _score_chunk(chunk, metrics, key, digests)
            requests = upcoming
            features.release(_output_refs(chunk))
            rf.append_jsonl(scores_path, lines)
            kept.extend(lines)
            progress.update(len(chunk))
    return kept


def _output_refs(chunk: Sequence[tuple[Sample, int, Path]]) -> list[ImageRef]:
    return [ImageRef(path=path) for _, _, path in chunk]


def _image_requests(chunk: Sequence[tuple[Sample, int, Path]], metrics: Mapping[str, Metric]) -> list[Any]:
    """The images the chunk's metrics will encode (for metrics that announce them; see ``accepts_image_refs``)."""
    refs, chunk_samples = _output_refs(chunk), [sample for sample, _, _ in chunk]
    return [
        request
        for metric in metrics.values()
        if metric.accepts_image_refs
        for request in metric.image_requests(refs, chunk_samples)
    ]


def _score_chunk(
    chunk: Sequence[tuple[Sample, int, Path]], metrics: Mapping[str, Metric], key: str, digests: Mapping[str, str]
) -> list[dict]:
    output_refs = _output_refs(chunk)
    decoded: list[Image.Image] = []  # opened here only when a metric needs the pixels (L1, LPIPS, plug-ins)
    chunk_samples = [sample for sample, _, _ in chunk]
    lines = [
        {
            "sample_id": sample.id,
            "k": k,
            "image": f"{rf.IMAGES}/{path.name}",
            "sample_sha256": digests[sample.id],
            "metadata": dict(sample.metadata),
            "scores": {},
            "excluded": {},
            "scoring_key": key,
        }
        for sample, k, path in chunk
    ]
    counters: dict[str, dict[str, int]] = {}
    for column, metric in metrics.items():
        before = Counter(metric.counters)
        if metric.accepts_image_refs:
            values = metric.score(output_refs, chunk_samples)
        else:
            decoded = decoded or [output.open() for output in output_refs]
            values = metric.score(decoded, chunk_samples)
        if len(values) != len(chunk):
            raise RuntimeError(f"metric {column} returned {len(values)} scores for {len(chunk)} outputs")
        for line, value in zip(lines, values, strict=True):
            if isinstance(value, Excluded):
                line["excluded"][column] = value.reason
            else:
                value = float(value)
                if not np.isfinite(value):
                    raise MigeBenchError(f"{line['image']}: metric {column} produced {value}; the output is unusable.")
                line["scores"][column] = value
        delta = Counter(metric.counters)
        delta.subtract(before)
        if any(delta.values()):
            counters[column] = {name: count for name, count in delta.items() if count}
    if counters:
        lines[0]["counters"] = counters  # per-chunk event counts, summed by the results code
    return lines


# ----------------------------------------------------------------------------------------------------------------------
# Whole runs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """What a run or a scoring pass produced."""

    run_dir: Path
    results: dict[str, Any]
    failures: list[dict[str, Any]]


def _record_timing(run_dir: Path, stage: str, seconds: float, shard: tuple[int, int] | None = None) -> None:
    path = run_dir / f"timings{rf.shard_suffix(shard)}.json"
    timings = rf.read_json(path) if path.is_file() else {}
    timings[stage] = round(timings.get(stage, 0.0) + seconds, 3)  # resumed stages add up
    rf.write_json_atomic(path, timings)


def _check_failures(failures: Sequence[Mapping[str, Any]], allowed: int, run_dir: Path) -> None:
    if len(failures) > allowed:
        reasons = Counter(record["reason"] for record in failures)
        listed = "; ".join(f"{count}x {reason}" for reason, count in reasons.most_common(LISTED_REASONS))
        if len(reasons) > LISTED_REASONS:
            listed += f"; and {len(reasons) - LISTED_REASONS} other reasons"
        files = rf.failure_files(run_dir, (record["sample_id"] for record in failures))
        results_path = run_dir / rf.RESULTS
        scored = results_path.is_file() and rf.read_json(results_path)["counts"]["scored_images"] > 0
        results = f" Scores of the other samples are in {results_path}." if scored else ""
        raise MigeBenchError(
            f"{len(failures)} sample(s) failed to generate (allowed: {allowed}; see "
            f"{', '.join(str(path) for path in files)}): {listed}.{results} Pass --allow-failures N to accept."
        )


def run(
    request: GenerationRequest,
    out: Path,
    options: ExecutionOptions | None = None,
    backbones: Mapping[str, str] | None = None,
    score: bool = True,
) -> RunOutcome:
    """Generates the task's images with the model into ``out``, then scores them (``mige-bench run``).

    Args:
        request: What to generate (task, model, seed, ...); recorded in the manifest.
        out: The run folder; an existing folder of the same request is resumed.
        options: Batch size, device, overwrite, allowed failures, progress bars.
        backbones: Per-backbone overrides (``{"clip": "<hub id or dir>"}``) on top of the task's defaults.
        score: Also score the images (``False`` stops after generation).

    Raises:
        MigeBenchError: bad input, a differing existing run, or more failures than allowed (after writing results).
    """
    options = options or ExecutionOptions()
    if options.shard is None:
        options = dataclasses.replace(options, shard=shard_from_environment())
    options = dataclasses.replace(options, device=device_for_process(options.device))
    if options.shard is not None and options.overwrite:
        raise MigeBenchError("--overwrite cannot be combined with sharding: it would delete other shards' images.")
    task = get_task(request.task)
    samples = load_samples(task, request.data_root, request.limit)
    digests = sample_digests(samples)
    check_device(options.device)
    load_generator = generator_factory(request.model, request.model_args, options.device)
    # Missing metric weights fail here, before hours of generation, with the full list of what to download.
    scoring_backbones = prepare_backbones(task, backbones or {}, options.device) if score else None
    # Building the metrics resolves any extra weights they need (e.g. an entity detector), so those fail early too.
    scoring_metrics = build_metrics(task, scoring_backbones) if score else None
    to_generate = samples if options.shard is None else shard_samples(samples, options.shard)
    with rf.run_lock(out, options.shard):
        # A folder in use or holding a different run is refused before the model loads (which can take minutes and
        # many GB of a busy GPU); only the generator's own settings must wait for it.
        partial = build_manifest(task, request, digests, settings=None)
        extending = options.shard is None and extends_limit(out, samples, digests)
        check_run_folder(out, partial, options.overwrite, settings_known=False, extending=extending)
        generator = load_generator()
        check_generator_fits(generator, request.model, task, samples)
        manifest = build_manifest(task, request, digests, generator.settings)
        prepare_run_folder(out, manifest, options.overwrite, extending)
        started = time.perf_counter()
        failures = generate_images(out, to_generate, generator, request.seed, manifest["images_per_sample"], options)
        _record_timing(out, "generate", time.perf_counter() - started, options.shard)
    outcome = RunOutcome(out, {}, failures)
    if options.shard is not None and (not score or not _mark_shard_done(out, options.shard)):
        return outcome
    if score:
        with rf.run_lock(out):
            outcome = _score_locked(out, task, samples, digests, manifest, scoring_backbones, options, scoring_metrics)
    _check_failures(outcome.failures, options.allow_failures, out)
    return outcome


def _mark_shard_done(run_dir: Path, shard: tuple[int, int]) -> bool:
    """Records that ``shard`` finished generating; ``True`` when every shard of the run has (this one scores)."""
    index, count = shard
    markers = run_dir / "shards"
    markers.mkdir(exist_ok=True)
    rf.write_json_atomic(markers / f"{index}-of-{count}.done", {"shard": [index, count]})
    finished = all((markers / f"{i}-of-{count}.done").is_file() for i in range(count))
    if not finished:
        logger.warning("shard %d/%d done; the last shard to finish scores the run (or: mige-bench score %s)",
                       index, count, run_dir)  # fmt: skip
    return finished


def score_run(
    run_dir: Path,
    options: ExecutionOptions | None = None,
    backbones: Mapping[str, str] | None = None,
    data_root: Path | None = None,
) -> RunOutcome:
    """(Re-)scores an existing run folder (``mige-bench score``); images are never regenerated.

    Args:
        run_dir: A folder written by :func:`run` (it must hold ``manifest.json`` and ``images/``).
        options: Batch size, device, progress bars, allowed failures.
        backbones: Per-backbone overrides on top of the task's defaults.
        data_root: The dataset location, when it moved since generation.
    """
    options = options or ExecutionOptions()
    if not (run_dir / rf.MANIFEST).is_file():
        raise MigeBenchError(
            f"{run_dir} is not a run folder (no {rf.MANIFEST}). To score a folder of images, use "
            "`mige-bench score --images DIR --task TASK`."
        )
    manifest = rf.read_json(run_dir / rf.MANIFEST)
    task = task_from_manifest(manifest)
    root = data_root or (Path(manifest["data_root"]) if manifest.get("data_root") else None)
    samples = load_samples(task, root, manifest.get("limit"))
    digests = sample_digests(samples)
    now, then = samples_identity(digests), manifest["samples"]
    if now["ids_sha256"] != then["ids_sha256"]:
        raise MigeBenchError(
            f"{run_dir}: the dataset now yields different samples than when the images were generated "
            f"({now['count']} now, {then['count']} then); point --data-root at the original data."
        )
    if now["content_sha256"] != then.get("content_sha256", now["content_sha256"]):  # absent: an older manifest
        raise MigeBenchError(
            f"{run_dir}: the dataset's content changed since the images were generated (the same {now['count']} "
            "sample ids, but other prompts, images or references); point --data-root at the copy the run was "
            "generated from, or generate the run again from this one."
        )
    check_device(options.device)
    scoring_backbones = prepare_backbones(task, backbones or {}, options.device)
    with rf.run_lock(run_dir):
        outcome = _score_locked(run_dir, task, samples, digests, manifest, scoring_backbones, options)
    _check_failures(outcome.failures, options.allow_failures, run_dir)
    return outcome


def prepare_backbones(task: Task, overrides: Mapping[str, str], device: str) -> Any:
    """The task's backbones with ``overrides`` applied, after checking that every one its metrics use is available."""
    from mige_bench.metrics.backbones import Backbones

    backbones = Backbones({**task.backbones, **overrides}, device=device)
    backbones.ensure_available(_backbones_used(task))
    return backbones


def _backbones_used(task: Task) -> list[str]:
    used = {name for b in task.metrics.values() for name in resolve("metric", b.metric, METRICS).backbones_used}
    return sorted(used)


def _score_locked(
    run_dir: Path,
    task: Task,
    samples: Sequence[Sample],
    digests: Mapping[str, str],
    manifest: Mapping[str, Any],
    backbones: Any,
    options: ExecutionOptions,
    metrics: Mapping[str, Metric] | None = None,
) -> RunOutcome:
    # Loaded before the scoring key is computed, so the key holds the weight hashes: new weights under the same
    # hub id never reuse old score lines.
    backbones.load(_backbones_used(task))
    started = time.perf_counter()
    metrics = metrics if metrics is not None else build_metrics(task, backbones)
    lines = score_images(
        run_dir, task, samples, digests, manifest["images_per_sample"], backbones, options, metrics=metrics
    )
    _record_timing(run_dir, "score", time.perf_counter() - started)
    timings = rf.read_all_timings(run_dir)
    failures = current_failures(run_dir, manifest["images_per_sample"])
    results = build_results(
        manifest=manifest,
        lines=lines,
        failures=failures,
        metric_classes={c: resolve("metric", b.metric, METRICS) for c, b in task.metrics.items()},
        backbone_provenance=backbones.provenance(),
        metric_provenance=metric_provenance(metrics),
        comparable=backbones.comparable,
        device=options.device,
        timings=timings,
        scored_sample_count=sum(sample.scored for sample in samples),
    )
    rf.write_json_atomic(run_dir / rf.RESULTS, results)
    return RunOutcome(run_dir, dict(results), failures)


def merge_runs(sources: Sequence[Path], out: Path) -> Path:
    """Combines run folders generated separately for the same request (e.g. shards on different machines).

    Their manifests must be identical; images are copied into ``out`` (an image present in two sources must be
    byte-identical), and the sources' failures whose images are still missing go to ``failures.merged.jsonl``, one
    record per sample: merging again, or adding more sources later, never counts a failure twice. Score the merged
    folder with :func:`score_run`; the results equal those of an unsharded run (timings aside).
    """
    if not sources:
        raise MigeBenchError("merge needs at least one run folder.")
    manifests = [rf.read_json(source / rf.MANIFEST) for source in sources]
    for source, manifest in zip(sources[1:], manifests[1:], strict=True):
        differences = run_differences(manifests[0], manifest)
        if differences:
            raise MigeBenchError(
                f"{source} is a different run from {sources[0]} (differs in: {', '.join(differences)})."
            )
    with rf.run_lock(out):
        prepare_run_folder(out, manifests[0], overwrite=False)
        (out / rf.IMAGES).mkdir(exist_ok=True)
        for source in sources:
            for image in sorted((source / rf.IMAGES).glob("*.png")):
                target = out / rf.IMAGES / image.name
                data = image.read_bytes()
                if target.is_file() and target.read_bytes() != data:
                    raise MigeBenchError(f"{image.name} differs between merged folders; they are not the same run.")
                if not target.is_file():
                    rf.write_bytes_atomic(target, data)
        # An earlier merge into ``out`` first, then the sources, so a source's latest reason wins.
        records = {record["sample_id"]: record for record in rf.read_jsonl(out / rf.MERGED_FAILURES)}
        for source in sources:
            records.update(rf.read_failure_records(source))
        images_per_sample = manifests[0]["images_per_sample"]
        pending = [records[i] for i in sorted(records) if _lacks_output(out, i, images_per_sample)]
        if pending:
            rf.write_jsonl_atomic(out / rf.MERGED_FAILURES, pending)
        else:
            (out / rf.MERGED_FAILURES).unlink(missing_ok=True)
    return out
