"""Dataset loaders: one function per dataset format, ``load(task, data_root) -> list[Sample]``.

``task.data`` carries the loader's arguments from the task YAML (hub id, split, local layout options); ``data_root``
is the user's local copy (``--data-root``), which takes precedence over any hub id. Loaders never download at run
time without being asked: offline with no local copy they raise :class:`~mige_bench.errors.MigeBenchError` naming
what to fetch and where to put it.
"""

LOADERS: dict[str, str] = {
    "demo": "mige_bench.loaders.demo:load_demo",
    "dreambench": "mige_bench.loaders.dreambench:load_dreambench",
    "emu_edit": "mige_bench.loaders.emu_edit:load_emu_edit",
    "magicbrush": "mige_bench.loaders.magicbrush:load_magicbrush",
    "migebench": "mige_bench.loaders.migebench:load_migebench",
}
