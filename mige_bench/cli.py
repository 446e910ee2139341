"""``mige-bench``: the command line. Every flag maps one to one onto the Python API in ``mige_bench.runner``."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mige_bench.errors import MigeBenchError

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a Unix tool whose reader (``| head``) stopped reading."""


# ----------------------------------------------------------------------------------------------------------------------
# Argument parsing helpers
# ----------------------------------------------------------------------------------------------------------------------


def parse_key_values(text: str, what: str) -> dict[str, str]:
    """Parses ``key=value,key=value`` (``--model-args``). Values may not contain commas."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MigeBenchError(f"{what}: {item!r} is not of the form key=value.")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_backbones(items: Sequence[str] | None) -> dict[str, str]:
    """Parses repeated ``--backbone name=spec`` flags (spec: hub id, local directory, checkpoint file, or smoke)."""
    overrides: dict[str, str] = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        if not sep or name not in ("clip", "dino", "lpips") or not spec:
            raise MigeBenchError(
                f"--backbone {item!r}: expected clip=..., dino=... or lpips=... with a non-empty spec."
            )
        overrides[name] = spec
    return overrides


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parses ``--shard I/N`` (0-based ``I``)."""
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise MigeBenchError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4.")
    return int(index), int(count)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum`` (``--limit 0`` stops with the command's usage)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; anything else is passed to torch as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_out(task_id: str, model: str) -> Path:
    """``runs/<task id>/<model>``, with characters unsafe in folder names replaced."""
    safe = "".join(c if c.isalnum() or c in "._-@" else "_" for c in task_id)
    return Path("runs") / safe / "".join(c if c.isalnum() or c in "._-" else "_" for c in model)


class _CommandParser(argparse.ArgumentParser):
    """The parser of a subcommand: an unknown option is reported with this subcommand's usage.

    Left to argparse, a subcommand hands unknown options up to the top-level parser, whose error shows the top-level
    usage, which lists none of the subcommand's options.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _add_subset_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that define which images a run holds: shared by ``run`` and ``score --images``, with one meaning."""
    parser.add_argument(
        "--limit",
        type=at_least(1),
        help="only the first N scored samples; a larger N (or none) on an existing run extends it, keeping its images",
    )
    parser.add_argument("--images-per-sample", type=at_least(1), help="override the task's number of images per sample")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing, different run in --out")


def _add_execution_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=at_least(1), default=4, help="images per model call (4)")
    parser.add_argument(
        "--score-batch-size", type=at_least(1), default=32, help="output images per scoring chunk / encoder batch (32)"
    )
    parser.add_argument(
        "--device", default="auto", help="torch device for the model and the metric backbones (auto: cuda if present)"
    )
    parser.add_argument(
        "--backbone",
        action="append",
        metavar="NAME=SPEC",
        help="override a metric backbone: clip=, dino= or lpips= a hub id, a local directory, a checkpoint file, "
        "or 'smoke' (repeatable)",
    )
    parser.add_argument("--data-root", type=Path, help="local copy of the task's dataset")
    parser.add_argument(
        "--allow-failures", type=at_least(0), default=0, help="exit 0 despite up to N failed samples (0)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mige-bench",
        description="Generate and score images for multimodal instruction-based generation and editing benchmarks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Every subcommand accepts -v too (`mige-bench run ... -v`). SUPPRESS: a subcommand that is not given -v must not
    # overwrite a -v given before it with its own default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)

    def add_command(name: str, summary: str, group: Any = commands) -> argparse.ArgumentParser:
        return group.add_parser(name, help=summary, parents=[common])

    run = add_command("run", "generate images for a task with a model, then score them")
    run.add_argument("--task", required=True, help="task id (e.g. emu_edit@mige), unique task name, or YAML path")
    run.add_argument("--model", required=True, help="registered model name (see `ls models`) or module:Class")
    run.add_argument("--model-args", default="", metavar="K=V,...", help="model arguments, e.g. dir=outputs/")
    run.add_argument("--out", type=Path, help="run folder (default runs/<task>/<model>); resumed if it exists")
    run.add_argument("--seed", type=int, default=0, help="base seed; each image's seed derives from it (0)")
    _add_subset_flags(run)
    run.add_argument("--no-score", action="store_true", help="stop after generation")
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="generate only shard I of N (0-based) into the shared --out; set automatically under torchrun / "
        "accelerate launch; the last shard to finish scores the run",
    )
    _add_execution_flags(run)

    score = add_command("score", "score an existing run folder, or a folder of images for a task")
    score.add_argument("run_dir", nargs="?", type=Path, help="run folder written by `run`")
    score.add_argument("--images", type=Path, help="folder of <sample_id>[_k].png|jpg images made elsewhere")
    score.add_argument("--task", help="task of --images")
    score.add_argument("--out", type=Path, help="run folder for --images (default runs/<task>/folder)")
    _add_subset_flags(score)
    _add_execution_flags(score)

    merge = add_command("merge", "combine run folders generated separately for the same run")
    merge.add_argument("sources", nargs="+", type=Path, help="run folders with identical manifests")
    merge.add_argument("--out", type=Path, required=True, help="merged run folder (then run `score` on it)")

    listing = add_command("ls", "list tasks, models or metrics")
    listing.add_argument("what", choices=["tasks", "models", "metrics"])

    data = add_command("data", "fetch or check a task's dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = add_command("fetch", "download what is public for a task (resumable)", data_commands)
    fetch.add_argument("task")
    fetch.add_argument(
        "--to", type=Path, help="destination folder (default $MIGE_BENCH_HOME/data/<dataset>, where loaders look)"
    )
    check = add_command("check", "validate a local copy: counts, missing and unreadable files", data_commands)
    check.add_argument("task")
    check.add_argument(
        "--data-root", type=Path, help="the copy to check (default: where `data fetch` writes and `run` looks)"
    )

    board = add_command("leaderboard", "render leaderboard tables, plots and the HTML site")
    board.add_argument("--root", type=Path, default=Path("leaderboards"), help="leaderboard folder (leaderboards)")
    board.add_argument("--html", type=Path, metavar="DIR", help="folder for the HTML site (default <root>/site)")
    board.add_argument("--check", action="store_true", help="write nothing; exit 1 if a rendered file is stale")
    board.add_argument("--add", type=Path, metavar="RUN_DIR", help="first add a scored run folder as a row")
    board.add_argument("--row", help="name of the row added with --add (default: the run folder's name)")

    # Same flags as `python -m reference_model.convert_mige_checkpoint`, plus -v (declared here so `--help` stays
    # import-free).
    convert = add_command(
        "convert-mige", "convert the official MIGE release (EurekaTian/MIGE) into a pipeline folder for --model mige"
    )
    convert.add_argument("--release", type=Path, help="download of EurekaTian/MIGE (model.pth and config folders)")
    convert.add_argument("--out", type=Path, required=True, help="output folder of the converted pipeline")
    convert.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="DiT + encoder dtype (bf16)")
    convert.add_argument("--checkpoint", type=Path, help="model.pth (default: inside --release)")
    convert.add_argument("--t5", type=Path, help="T5 config/tokenizer folder (default: --release/t5-v1_1-xxl)")
    convert.add_argument("--bert", type=Path, help="Q-Former config folder (default: --release/bert-base-uncased)")
    convert.add_argument("--vae", type=Path, help="VAE folder (default: --release/sd-vae-ft-ema)")

    compare = add_command(
        "compare", "paired comparison of two runs; exit 1 on a significant regression or missing samples"
    )
    compare.add_argument("base", type=Path, help="run folder (or its results.json) of the reference run")
    compare.add_argument("new", type=Path, help="run folder (or its results.json) of the candidate run")
    compare.add_argument(
        "--tolerance",
        action="append",
        metavar="METRIC=DELTA",
        help="allowed worsening of a metric before a significant one fails the gate (default 0; repeatable)",
    )
    compare.add_argument(
        "--allow-missing",
        type=at_least(0),
        default=0,
        metavar="N",
        help="pass despite up to N samples scored in the base run and not in the new one (0)",
    )
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("mige-bench")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


# ----------------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def format_results_table(results: Mapping[str, Any]) -> str:
    """The human summary of a results file: one row per metric, then the counts."""
    import pandas as pd

    rows = []
    for column, summary in results["metrics"].items():
        ci = summary["ci95"]
        excluded = sum(summary["excluded"].values())
        rows.append(
            {
                "metric": column + (" ↑" if summary["higher_is_better"] else " ↓"),
                "mean": _number(summary["mean"]),
                "± stderr": _number(summary["stderr"]),
                "95% CI": "—" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]",
                "n": summary["n_samples"],
                "excluded": excluded or "",
            }
        )
    table = pd.DataFrame(rows).to_string(index=False)
    counts = results["counts"]
    lines = [
        f"{results['task_id']} (version {results['task']['version']}) — model {results['model']['name']}",
        table,
        f"samples scored: {counts['scored_samples']}, images scored: {counts['scored_images']}"
        f"/{counts['expected_images']}, failed samples: {counts['failed_samples']}",
    ]
    for column, summary in results["metrics"].items():
        for reason, count in summary["excluded"].items():
            lines.append(f"  {column}: {count} excluded ({reason})")
        for name, count in summary["counters"].items():
            lines.append(f"  {column}: {name} = {count}")
    if not results["comparable"]:
        lines.append(
            "NOTE: smoke (random) backbones were used — these numbers are NOT comparable to published results."
        )
    return "\n".join(lines)


def _print_outcome(outcome: Any) -> None:
    from mige_bench import run_folder as rf

    if outcome.results:
        print(format_results_table(outcome.results))
    print(f"run folder: {outcome.run_dir}")
    for name in (rf.RESULTS, rf.SCORES, rf.IMAGES):
        if (outcome.run_dir / name).exists():
            print(f"  {outcome.run_dir / name}")
    for path in rf.failure_files(outcome.run_dir, (record["sample_id"] for record in outcome.failures)):
        print(f"  {path}")


# ----------------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------------


LISTED_UNMATCHED_FILES = 5


def warn_unmatched_folder_images(request: Any) -> None:
    """For ``--model folder``: names the images in the folder that no sample of the task reads (they go unscored).

    Compared with the whole task, not the ``--limit`` subset, so images of samples beyond the limit are not named.
    """
    from mige_bench.models.folder import unmatched_files
    from mige_bench.runner import load_samples
    from mige_bench.task import get_task

    directory = Path(request.model_args.get("dir", "")).expanduser()
    if request.model != "folder" or not request.model_args.get("dir") or not directory.is_dir():
        return  # a missing folder is refused by the generator itself, with the reason
    task = get_task(request.task)
    per_sample = task.images_per_sample if request.images_per_sample is None else request.images_per_sample
    samples = load_samples(task, request.data_root)
    unmatched = unmatched_files(directory, samples, per_sample)
    if not unmatched:
        return
    names = ", ".join(path.name for path in unmatched[:LISTED_UNMATCHED_FILES])
    if len(unmatched) > LISTED_UNMATCHED_FILES:
        names += f" and {len(unmatched) - LISTED_UNMATCHED_FILES} more"
    expected = ", ".join(f"{samples[0].output_name(k, per_sample)}.png" for k in range(min(per_sample, 2)))
    print(
        f"warning: {len(unmatched)} image(s) in {directory} match no sample of {task.id} and will not be scored: "
        f"{names}. Names must be the sample id"
        f"{'' if per_sample == 1 else f' plus _<k> for k = 0..{per_sample - 1}'} (e.g. {expected}).",
        file=sys.stderr,
    )


def command_run(args: argparse.Namespace) -> None:
    from mige_bench.runner import ExecutionOptions, GenerationRequest, run
    from mige_bench.task import get_task

    task = get_task(args.task)
    request = GenerationRequest(
        task=args.task,
        model=args.model,
        model_args=parse_key_values(args.model_args, "--model-args"),
        seed=args.seed,
        limit=args.limit,
        images_per_sample=args.images_per_sample,
        data_root=args.data_root,
    )
    warn_unmatched_folder_images(request)
    outcome = run(
        request,
        out=args.out or default_out(task.id, args.model),
        options=_execution_options(args, ExecutionOptions, overwrite=args.overwrite, shard=parse_shard(args.shard)),
        backbones=parse_backbones(args.backbone),
        score=not args.no_score,
    )
    _print_outcome(outcome)


def command_score(args: argparse.Namespace) -> None:
    from mige_bench.runner import ExecutionOptions, GenerationRequest, run, score_run
    from mige_bench.task import get_task

    backbones = parse_backbones(args.backbone)
    if args.images is not None:
        if args.run_dir is not None or not args.task:
            raise MigeBenchError("score --images DIR needs --task TASK and no run folder argument.")
        task = get_task(args.task)
        request = GenerationRequest(
            task=args.task,
            model="folder",
            model_args={"dir": str(args.images)},
            limit=args.limit,
            images_per_sample=args.images_per_sample,
            data_root=args.data_root,
        )
        options = _execution_options(args, ExecutionOptions, overwrite=args.overwrite)
        warn_unmatched_folder_images(request)
        outcome = run(request, out=args.out or default_out(task.id, "folder"), options=options, backbones=backbones)
    elif args.run_dir is not None:
        given = [
            flag
            for flag, value in (
                ("--task", args.task),
                ("--limit", args.limit),
                ("--images-per-sample", args.images_per_sample),
                ("--overwrite", args.overwrite),
                ("--out", args.out),
            )
            if value not in (None, False)
        ]
        if given:
            raise MigeBenchError(
                f"{', '.join(given)}: only for score --images. A run folder is scored in place, as generated (its "
                "manifest fixes the task, samples and images); to change those, use `run`."
            )
        options = _execution_options(args, ExecutionOptions)
        outcome = score_run(args.run_dir, options=options, backbones=backbones, data_root=args.data_root)
    else:
        raise MigeBenchError("score needs a run folder, or --images DIR --task TASK.")
    _print_outcome(outcome)


def _execution_options(args: argparse.Namespace, options_class: type, **extra: Any) -> Any:
    return options_class(
        batch_size=args.batch_size,
        score_batch_size=args.score_batch_size,
        device=resolve_device(args.device),
        allow_failures=args.allow_failures,
        progress=not args.no_progress,
        **extra,
    )


def command_ls(args: argparse.Namespace) -> None:
    if args.what == "tasks":
        from mige_bench.task import available_tasks

        for task_id, task in available_tasks().items():
            summary = task.description.split(". ")[0].rstrip(".")  # the first sentence; the YAML has the rest
            print(f"{task_id:34s} v{task.version}  {task.kind:12s} {summary}")
    elif args.what == "models":
        from mige_bench.models import MODELS
        from mige_bench.models.diffusers_pipeline import FAMILIES, PRESETS

        for name, target in MODELS.items():
            print(f"{name:20s} {target}")
        print("\ndiffusers presets (--model diffusers --model-args preset=NAME); see docs/models.md:")
        for name, preset in PRESETS.items():
            family = FAMILIES.get(preset.pipeline)
            kinds = ", ".join(family.task_kinds) if family else "not yet supported"
            print(f"  {name:28s} {preset.pretrained:40s} {kinds}{'  (gated)' if preset.gated else ''}")
    else:
        from mige_bench.metrics import METRICS

        for name, target in METRICS.items():
            print(f"{name:20s} {target}")


def command_data(args: argparse.Namespace) -> None:
    from mige_bench import data_store
    from mige_bench.task import get_task

    task = get_task(args.task)
    if args.data_command == "fetch":
        location = data_store.fetch_dataset(task, args.to)
        print(f"{task.id}: data in {location}")
    else:
        report = data_store.check_dataset(task, args.data_root)
        print(report.render())
        if not report.ok:
            raise MigeBenchError(f"{report.location} is not a complete copy of the {task.id} data (see above).")


EXIT_CHECK_FAILED = 1


def command_leaderboard(args: argparse.Namespace) -> None:
    from mige_bench.leaderboard import add_row, check_leaderboards, write_leaderboards

    if args.row and not args.add:
        raise MigeBenchError("--row names the row added with --add RUN_DIR; give --add too.")
    if args.add and args.check:
        raise MigeBenchError("--add changes the leaderboard and --check only reads it; run them separately.")
    if args.add:
        print(f"added row {add_row(args.add, args.root, args.row)}")
    if args.check:
        problems = check_leaderboards(args.root, args.html)
        for problem in problems:
            print(problem)
        if problems:
            print(f"{len(problems)} problem(s); run `mige-bench leaderboard` and commit the result.", file=sys.stderr)
            raise SystemExit(EXIT_CHECK_FAILED)
        print("leaderboards are up to date")
        return
    changed = write_leaderboards(args.root, args.html)
    print(f"{len(changed)} file(s) written or removed under {args.root}" + (f" and {args.html}" if args.html else ""))


def command_compare(args: argparse.Namespace) -> None:
    from mige_bench.compare import compare_runs, format_comparison, parse_tolerances

    comparison = compare_runs(
        _results_file(args.base), _results_file(args.new), parse_tolerances(args.tolerance), args.allow_missing
    )
    print(format_comparison(comparison))
    if not comparison.passed:
        raise SystemExit(EXIT_CHECK_FAILED)


def _results_file(path: Path) -> Path:
    """A run folder becomes its ``results.json``: ``compare`` takes folders as ``score`` and ``merge`` do."""
    from mige_bench import run_folder as rf

    if not path.is_dir():
        return path
    if not (path / rf.RESULTS).is_file():
        raise MigeBenchError(f"{path} holds no {rf.RESULTS}; score it first with: mige-bench score {path}")
    return path / rf.RESULTS


def command_merge(args: argparse.Namespace) -> None:
    from mige_bench.runner import merge_runs

    merged = merge_runs(args.sources, args.out)
    print(f"merged {len(args.sources)} folder(s) into {merged}; score it with: mige-bench score {merged}")


def command_convert_mige(args: argparse.Namespace) -> None:
    from reference_model.convert_mige_checkpoint import run_from_arguments

    try:
        output = run_from_arguments(args)
    except (FileNotFoundError, ValueError) as error:
        raise MigeBenchError(str(error)) from error
    print(f"converted MIGE pipeline: {output}; use it with --model mige --model-args weights={output}")


COMMANDS = {
    "run": command_run,
    "score": command_score,
    "merge": command_merge,
    "ls": command_ls,
    "data": command_data,
}
COMMANDS["leaderboard"] = command_leaderboard
COMMANDS["compare"] = command_compare
COMMANDS["convert-mige"] = command_convert_mige


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mige-bench`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        COMMANDS[args.command](args)
        sys.stdout.flush()  # here, not at exit, so that a reader that stopped reading is handled below
    except MigeBenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(
            "interrupted: finished images and scores are kept; run the same command again to resume.", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader stopped reading (`mige-bench compare ... | head`): stop quietly, as Unix tools do. stdout now
        # points at /dev/null, so the interpreter's final flush cannot raise the same error again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as error:
        # Last resort for the environment (a full disk, a permission, a read-only mount) where no earlier check
        # caught it: one line naming the path; -v adds the traceback.
        print(f"error: {_describe_os_error(error)}", file=sys.stderr)
        logger.info("traceback of the error above:", exc_info=error)
        return EXIT_USER_ERROR
    return 0


def _describe_os_error(error: OSError) -> str:
    paths = [str(path) for path in (error.filename, error.filename2) if path is not None]
    reason = error.strerror or str(error)
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


if __name__ == "__main__":
    sys.exit(main())
