"""The static HTML site: an index, one page per task (sortable tables, per-category breakdowns, plots, reported
numbers) and one gallery page per table. Every text is HTML-escaped; the script is inline and there is no external
resource, and every image or results file a page uses is copied into the site, so it opens from disk with no server.

Site layout::

    index.html                      tasks, with links
    <task>.html                     one task: its tables, breakdowns, plots, reported numbers
    <task>-<fingerprint>-gallery.html   the per-sample gallery of one table
    plots/<task>/<file>.png         plots (the same files as next to the markdown tables)
    assets/results/<task>/...       copies of the results files and gallery images
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from mige_bench.leaderboard.collect import LeaderboardTable, Row, TaskPage, format_summary
from mige_bench.leaderboard.gallery import GallerySample
from mige_bench.leaderboard.markdown import (
    CELL_LEGEND,
    PLOTS_DIR,
    REPORTED_LEGEND,
    category_lines,
    coverage_notes,
    reported_lines,
    sample_count,
    table_facts,
    table_heading,
)
from mige_bench.leaderboard.plots import Plot

logger = logging.getLogger(__name__)

ASSETS_DIR = "assets"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th.sortable { cursor: pointer; background: #eef2f8; }
th.sortable:after { content: " \\21C5"; color: #888; }
tr.sanity td { color: #666; font-style: italic; }
section.reported { background: #fff8e6; border: 2px dashed #d9a400; padding: 0 1em; margin-top: 2em; }
.warning { color: #a40000; font-weight: bold; }
img.plot { max-width: 100%; display: block; margin: 0.5em 0; }
figure { display: inline-block; margin: 0.2em; text-align: center; }
figure img { max-width: 180px; max-height: 180px; }
figcaption { font-size: 0.8em; color: #555; }
"""

SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (header, column) {
    header.classList.add("sortable");
    header.addEventListener("click", function () {
      var body = table.tBodies[0];
      var ascending = header.dataset.order !== "asc";
      header.dataset.order = ascending ? "asc" : "desc";
      var key = function (row) {
        var cell = row.cells[column];
        var value = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
        var number = parseFloat(value);
        return isNaN(number) ? value.toLowerCase() : number;
      };
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
        return ascending ? order : -order;
      }).forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(path: str | Path) -> str:
    return _e(quote(str(path).replace("\\", "/"), safe="/@"))


def _document(title: str, body: Sequence[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{_e(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            *body,
            f"<script>{SORT_SCRIPT}</script>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _html_table(
    header: Sequence[str], lines: Iterable[Sequence[str]], sortable: bool = False, classes: Sequence[str] = ()
) -> list[str]:
    """A table of already-escaped cell HTML (``<td>`` markup included) under escaped headers."""
    rendered = [f'<table class="{"sortable" if sortable else "plain"}">', "<thead><tr>"]
    rendered += [f"<th>{_e(cell)}</th>" for cell in header]
    rendered += ["</tr></thead>", "<tbody>"]
    for index, line in enumerate(lines):
        row_class = f' class="{classes[index]}"' if index < len(classes) and classes[index] else ""
        rendered.append(f"<tr{row_class}>" + "".join(line) + "</tr>")
    return [*rendered, "</tbody>", "</table>"]


def _td(text: object, sort: float | int | str | None = None) -> str:
    sort_attribute = "" if sort is None else f' data-sort="{_e(sort)}"'
    return f"<td{sort_attribute}>{_e(text)}</td>"


def gallery_filename(page: TaskPage, table: LeaderboardTable) -> str:
    return f"{page.slug}-{table.fingerprint}-gallery.html"


# ----------------------------------------------------------------------------------------------------------------------
# Task pages
# ----------------------------------------------------------------------------------------------------------------------


def _sample_count_td(row: Row) -> str:
    """The ``n`` cell, sorted on the samples with scores; in red, with the note as its tooltip, when incomplete."""
    note = row.coverage_note
    if note is None:
        return _td(sample_count(row), row.n_samples)
    return f'<td data-sort="{row.n_samples}" class="warning" title="{_e(note)}">{_e(sample_count(row))}</td>'


def _ranking_table(table: LeaderboardTable, slug: str) -> list[str]:
    header = ["#", "model", *(column.label for column in table.columns), "n", "version", "date", "source"]
    lines = []
    for rank, row in enumerate(table.rows, start=1):
        metrics = row.results["metrics"]
        cells = [_td(rank, rank), _td(row.name + (" (sanity)" if row.is_sanity else ""))]
        for column in table.columns:
            summary = metrics.get(column.name)
            mean = summary.get("mean") if summary else None
            cells.append(_td(format_summary(summary), "" if mean is None else repr(mean)))
        cells += [
            _sample_count_td(row),
            _td(row.results["task"]["version"]),
            _td(row.date),
            f'<td><a href="{_href(f"{ASSETS_DIR}/{row.path.as_posix()}")}">{_e(row.source)}</a></td>',
        ]
        lines.append(cells)
    return _html_table(header, lines, sortable=True, classes=["sanity" if row.is_sanity else "" for row in table.rows])


def _table_section(page: TaskPage, table: LeaderboardTable, plots: Sequence[Plot], has_gallery: bool) -> list[str]:
    body = [f'<section class="reproduced" id="protocol-{table.fingerprint}">', f"<h2>{_e(table_heading(table))}</h2>"]
    body += ["<ul>"] + [f"<li>{_e(fact.replace('**', '').replace('`', ''))}</li>" for fact in table_facts(table)]
    body += ["</ul>", *_ranking_table(table, page.slug)]
    body += [f'<p class="warning">{_e(note)}</p>' for note in coverage_notes(table)]
    for key in table.breakdown_keys:
        header, lines = category_lines(table, key)
        body += [f"<h3>{_e(table.primary.name)} by {_e(key)}</h3>"]
        body += _html_table(header, ([_td(cell) for cell in line] for line in lines), sortable=True)
    for plot in plots:
        source = _href(f"{PLOTS_DIR}/{page.slug}/{plot.filename}")
        body.append(f'<img class="plot" src="{source}" alt="{_e(plot.title)}">')
    if has_gallery:
        body.append(f'<p><a href="{_href(gallery_filename(page, table))}">Per-sample gallery</a></p>')
    return [*body, "</section>"]


def _reported_section(page: TaskPage) -> list[str]:
    body = ['<section class="reported">', "<h2>Reported in papers (not reproduced by mige-bench)</h2>"]
    body.append(f"<p>{_e(REPORTED_LEGEND)}</p>")
    for table in page.reported:
        header, lines = reported_lines(table)
        body += [f"<h3>{_e(table.title)}</h3>", f"<p><b>Protocol:</b> {_e(table.protocol)}</p>"]
        if table.notes:
            body.append(f"<p><b>Notes:</b> {_e(table.notes)}</p>")
        body += _html_table(header, ([_td(cell) for cell in line] for line in lines), sortable=True)
        body.append(f"<p>Source file: <code>{_e(table.source_file)}</code></p>")
    return [*body, "</section>"]


def render_task_page(page: TaskPage, plots: Mapping[str, Sequence[Plot]], galleries: Mapping[str, object]) -> str:
    """The HTML page of one task (``galleries``: fingerprints of the tables that have a gallery page)."""
    body = ['<p><a href="index.html">All tasks</a></p>', f"<h1>{_e(page.task_id)}</h1>"]
    if page.description:
        body.append(f"<p>{_e(page.description)}</p>")
    if page.tables:
        body.append(f"<p>{_e(CELL_LEGEND.replace('**', ''))} Click a column header to sort.</p>")
    for table in page.tables:
        body += _table_section(page, table, plots.get(table.fingerprint, ()), table.fingerprint in galleries)
    if page.reported:
        body += _reported_section(page)
    return _document(f"mige-bench leaderboard: {page.task_id}", body)


def render_index(pages: Sequence[TaskPage]) -> str:
    """The site's front page: one line per task with its number of reproduced and reported tables."""
    lines = [
        [
            f'<td><a href="{_href(page.slug + ".html")}">{_e(page.task_id)}</a></td>',
            _td(sum(len(table.rows) for table in page.tables)),
            _td(len(page.tables)),
            _td(sum(len(table.rows) for table in page.reported)),
            _td(page.description),
        ]
        for page in pages
    ]
    header = ["task", "reproduced rows", "reproduced tables", "reported rows", "description"]
    body = ["<h1>mige-bench leaderboards</h1>", *_html_table(header, lines, sortable=True)]
    return _document("mige-bench leaderboards", body)


# ----------------------------------------------------------------------------------------------------------------------
# Gallery pages
# ----------------------------------------------------------------------------------------------------------------------


def _figures(items: Iterable[tuple[str, Path]]) -> str:
    figures = [
        f'<figure><img src="{_href(f"{ASSETS_DIR}/{path.as_posix()}")}" alt="{_e(label)}">'
        f"<figcaption>{_e(label)}</figcaption></figure>"
        for label, path in items
    ]
    return "".join(figures) or "—"


def render_gallery_page(page: TaskPage, table: LeaderboardTable, samples: Sequence[GallerySample]) -> str:
    """One table's gallery: per sample, texts, inputs, references, then each row's outputs side by side."""
    header = ["sample", "instruction and captions", "inputs", "references", *(row.name for row in table.rows)]
    lines = []
    for sample in samples:
        texts = "".join(f"<p><b>{_e(label)}:</b> {_e(text)}</p>" for label, text in sample.texts) or "—"
        cells = [
            _td(sample.sample_id),
            f"<td>{texts}</td>",
            f"<td>{_figures(sample.inputs)}</td>",
            f"<td>{_figures(sample.references)}</td>",
        ]
        for row in table.rows:
            outputs = sample.outputs.get(row.name, ())
            cells.append(f"<td>{_figures((f'{row.name} #{k}', path) for k, path in enumerate(outputs))}</td>")
        lines.append(cells)
    body = [
        f'<p><a href="index.html">All tasks</a> · <a href="{_href(page.slug + ".html")}">{_e(page.task_id)}</a></p>',
        f"<h1>{_e(page.task_id)}: per-sample gallery</h1>",
        f"<p>{_e(table_heading(table))}. Thumbnails of the first samples (by id) stored with each row.</p>",
        *_html_table(header, lines),
    ]
    return _document(f"mige-bench gallery: {page.task_id}", body)
