"""Leaderboards: functions over results files that render markdown tables, plots and a static HTML site.

Source of truth (committed, written by people or by :func:`add_row`)::

    leaderboards/results/<task>/<row>.json       a results file (schema in ``mige_bench.results``)
    leaderboards/results/<task>/<row>.gallery/   optional thumbnails for the per-sample gallery
    leaderboards/reported/*.yaml                 numbers published in papers, with citations

Generated (by ``mige-bench leaderboard``; ``--check`` fails when any of it is stale)::

    leaderboards/<task>.md                       tables, per-category breakdowns, plots, reported numbers
    leaderboards/plots/<task>/*.png              plots embedded in the markdown and the site
    leaderboards/site/                           the static HTML site (or ``--html DIR``)
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mige_bench.errors import MigeBenchError
from mige_bench.leaderboard.collect import (
    GALLERY_SUFFIX,
    RESULTS_DIR,
    check_row_name,
    collect_rows,
    group_into_tables,
    task_pages,
    task_slug,
)
from mige_bench.leaderboard.gallery import capture_gallery, merge_galleries
from mige_bench.leaderboard.markdown import PLOTS_DIR, render_task_markdown
from mige_bench.leaderboard.plots import table_plots
from mige_bench.leaderboard.reported import load_reported
from mige_bench.leaderboard.site import (
    ASSETS_DIR,
    gallery_filename,
    render_gallery_page,
    render_index,
    render_task_page,
)
from mige_bench.run_folder import RESULTS, read_json, write_bytes_atomic

logger = logging.getLogger(__name__)

SITE_DIR = "site"
README = "README.md"
DEFAULT_GALLERY_SAMPLES = 6


@dataclass
class RenderedFiles:
    """Every generated file.

    Attributes:
        contents: Path -> bytes of each file.
        plots: The plot files among them, which ``--check`` tests by name (see ``mige_bench.leaderboard.plots``).
    """

    contents: dict[Path, bytes] = field(default_factory=dict)
    plots: set[Path] = field(default_factory=set)


def render_leaderboards(root: Path, html_dir: Path | None = None) -> RenderedFiles:
    """Renders every generated file in memory.

    Args:
        root: The leaderboard root (``leaderboards/``).
        html_dir: Where the site goes (default ``<root>/site``).

    Returns:
        The generated files.
    """
    html_dir = html_dir or root / SITE_DIR
    tables = group_into_tables(collect_rows(root))
    pages = task_pages(tables, load_reported(root))
    plots = {table.fingerprint: table_plots(table) for table in tables}
    rendered = RenderedFiles()
    files = rendered.contents
    for page in pages:
        files[root / f"{page.slug}.md"] = render_task_markdown(page, plots).encode()
        galleries = {}
        for table in page.tables:
            for plot in plots[table.fingerprint]:
                for folder in (root, html_dir):
                    files[folder / PLOTS_DIR / page.slug / plot.filename] = plot.png
                    rendered.plots.add(folder / PLOTS_DIR / page.slug / plot.filename)
            for row in table.rows:
                files[html_dir / ASSETS_DIR / row.path] = (root / row.path).read_bytes()
            samples = merge_galleries(root, table.rows)
            if samples:
                galleries[table.fingerprint] = samples
                files[html_dir / gallery_filename(page, table)] = render_gallery_page(page, table, samples).encode()
                for sample in samples:
                    images = [path for _, path in (*sample.inputs, *sample.references)]
                    images += [path for outputs in sample.outputs.values() for path in outputs]
                    for image in images:
                        files[html_dir / ASSETS_DIR / image] = (root / image).read_bytes()
        files[html_dir / f"{page.slug}.html"] = render_task_page(page, plots, galleries).encode()
    files[html_dir / "index.html"] = render_index(pages).encode()
    return rendered


def _generated_on_disk(root: Path, html_dir: Path) -> set[Path]:
    """Files where ``mige-bench leaderboard`` writes: ``<root>/*.md`` but the README, the plot folders, and the
    site's pages, plots and assets (nothing else of a user-chosen ``--html`` folder is touched)."""
    found = {path for path in root.glob("*.md") if path.name != README} | set(html_dir.glob("*.html"))
    for folder in (root / PLOTS_DIR, html_dir / PLOTS_DIR, html_dir / ASSETS_DIR):
        found |= {path for path in folder.rglob("*") if path.is_file()}
    return found


def write_leaderboards(root: Path, html_dir: Path | None = None) -> list[Path]:
    """Renders and writes every generated file, and deletes generated files that are no longer produced.

    Returns:
        The files written or deleted (unchanged files are left alone).
    """
    html_dir = html_dir or root / SITE_DIR
    files = render_leaderboards(root, html_dir).contents
    changed = []
    for path, content in sorted(files.items()):
        if not path.is_file() or path.read_bytes() != content:
            write_bytes_atomic(path, content)
            changed.append(path)
    for orphan in sorted(_generated_on_disk(root, html_dir) - set(files)):
        orphan.unlink()
        changed.append(orphan)
    logger.info("leaderboard: %d files rendered, %d changed", len(files), len(changed))
    return changed


def check_leaderboards(root: Path, html_dir: Path | None = None) -> list[str]:
    """Problems that ``--check`` fails on: stale, missing or orphaned generated files, and missing sanity rows.

    Plots are checked by name (their names hash the data they draw); every other file byte for byte.

    Returns:
        One line per problem (empty when everything is up to date).

    Raises:
        MigeBenchError: ``root`` does not exist (every generated file would be reported missing, for the wrong reason).
    """
    if not root.is_dir():
        raise MigeBenchError(f"no leaderboard at {root}; run from the repository root or pass --root DIR.")
    html_dir = html_dir or root / SITE_DIR
    rendered = render_leaderboards(root, html_dir)
    files = rendered.contents
    problems = []
    for path, content in sorted(files.items()):
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif path not in rendered.plots and path.read_bytes() != content:
            problems.append(f"stale: {path}")
    problems += [f"not produced any more: {path}" for path in sorted(_generated_on_disk(root, html_dir) - set(files))]
    for table in group_into_tables(collect_rows(root)):
        if table.missing_sanity:
            problems.append(
                f"{table.task_id} (protocol {table.fingerprint}): no sanity row for {', '.join(table.missing_sanity)}"
            )
    return problems


def add_row(
    run_dir: Path, root: Path, row_name: str | None = None, gallery_samples: int = DEFAULT_GALLERY_SAMPLES
) -> Path:
    """Adds (or replaces) a leaderboard row from a scored run folder, with its gallery thumbnails.

    Args:
        run_dir: A run folder with ``results.json`` and ``scores.jsonl``.
        root: The leaderboard root.
        row_name: The row's name (default: the run folder's name).
        gallery_samples: Samples stored for the per-sample gallery (0 for none).

    Returns:
        The row's results file.

    Raises:
        MigeBenchError: ``run_dir`` does not exist or holds no ``results.json``.
    """
    if not run_dir.exists():
        raise MigeBenchError(f"{run_dir} does not exist; pass a run folder written by `mige-bench run`.")
    source = run_dir / RESULTS
    if not source.is_file():
        raise MigeBenchError(f"{run_dir} has no {RESULTS}; score the run first (`mige-bench score {run_dir}`).")
    results: Mapping = read_json(source)
    name = check_row_name(row_name or run_dir.resolve().name)
    destination = root / RESULTS_DIR / task_slug(results["task_id"]) / f"{name}.json"
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        logger.warning("replacing leaderboard row %s", destination)
    shutil.copyfile(source, destination)
    gallery = destination.with_name(name + GALLERY_SUFFIX)
    shutil.rmtree(gallery, ignore_errors=True)
    if gallery_samples > 0:
        capture_gallery(run_dir, gallery, gallery_samples)
    return destination


__all__ = ["add_row", "check_leaderboards", "render_leaderboards", "write_leaderboards"]
