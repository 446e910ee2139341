"""Dataset loaders: one function per dataset format, ``load(task, data_root) -> list[Sample]``.

``task.data`` carries the loader's arguments from the task YAML (hub id, split, local layout options); ``data_root``
is the user's local copy (``--data-root``), which takes precedence over any hub id. Loaders never download at run
time without being asked: offline with no local copy they raise :class:`~mige_bench.errors.MigeBenchError` naming
what to fetch and where to put it.
"""

import importlib

LOADERS: dict[str, str] = {
    "demo": "mige_bench.loaders.demo:load_demo",
    "dreambench": "mige_bench.loaders.dreambench:load_dreambench",
    "emu_edit": "mige_bench.loaders.emu_edit:load_emu_edit",
    "magicbrush": "mige_bench.loaders.magicbrush:load_magicbrush",
    "migebench": "mige_bench.loaders.migebench:load_migebench",
}

# ``data`` keys every loader understands (see ``local_copy`` and ``contents``); each loader module adds its own in
# ``DATA_KEYS``.
SHARED_DATA_KEYS = frozenset({"dataset", "hub_id", "hub_revision", "expected", "manual_download"})


def data_keys(loader: str) -> frozenset[str] | None:
    """The ``data`` keys that ``loader`` reads, so a task file's typo is refused instead of silently ignored;
    ``None`` for a loader module that declares no ``DATA_KEYS`` (its keys are not checked)."""
    own = getattr(importlib.import_module(LOADERS[loader].partition(":")[0]), "DATA_KEYS", None)
    return None if own is None else SHARED_DATA_KEYS | own
