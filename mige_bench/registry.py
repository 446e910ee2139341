"""Plug-in lookup: registries are plain dicts of name -> ``"module:attribute"`` strings, imported on first use.

Nothing heavy is imported until a plug-in is actually used, and any dotted path (``my_pkg.models:MyGenerator``) works
wherever a registered name does.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

from mige_bench.errors import MigeBenchError


def resolve(kind: str, name: str, registry: Mapping[str, str]) -> Any:
    """Returns the object a registered name (or a ``module:attribute`` path) points to.

    Args:
        kind: What is being looked up, for error messages (``"model"``, ``"metric"``...).
        name: A key of ``registry`` or a ``module:attribute`` path.
        registry: The registry dict.

    Raises:
        MigeBenchError: unknown name (with close matches) or an import path that does not resolve.
    """
    target = registry.get(name)
    if target is None:
        if ":" not in name:
            suggestion = difflib.get_close_matches(name, list(registry), n=1)
            hint = f" Did you mean {suggestion[0]!r}?" if suggestion else ""
            raise MigeBenchError(f"Unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(registry))}.")
        target = name
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise MigeBenchError(f"Cannot import {kind} {name!r} from module {module_name!r}: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        raise MigeBenchError(f"Module {module_name!r} has no {kind} {attribute!r}.") from error
