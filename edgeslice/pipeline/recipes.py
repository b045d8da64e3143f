"""Pipeline recipes: a whole ``compress`` configuration in one TOML file, with command-line overrides.

A recipe's top-level keys are :class:`~edgeslice.pipeline.CompressConfig` fields; the ``[slicing]`` and
``[pruning]`` tables hold :class:`~edgeslice.pipeline.SliceConfig` and
:class:`~edgeslice.pruning.IterativePruneConfig` fields. An optional top-level ``description`` string says what the
recipe is for and is not part of the configuration. Missing keys take the config's defaults.

Shipped recipes live in ``recipes/*.toml`` at the repository root (found from a source checkout or an editable
install) or in ``<prefix>/share/edgeslice/recipes`` (a wheel install); any other recipe is given by its path.

Example:
    >>> cfg = load_recipe("mobilenetv3-fashion-mnist", ["slicing.theta=0.9", "seed=1"])
    >>> cfg.slicing.theta, cfg.seed
    (0.9, 1)
"""

from __future__ import annotations

import json
import math
import os
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import CompressConfig

import tomllib

RECIPE_SUFFIX = ".toml"
#: Written next to the artifacts by ``edgeslice run``: the recipe after overrides, loadable as a recipe again.
EFFECTIVE_NAME = "recipe.effective.toml"
#: Top-level keys that describe a recipe and are not configuration.
ABOUT_KEYS = ("description",)
#: Tables of a recipe and the config classes they load into (resolved lazily: the pipeline imports torch).
NESTED = ("slicing", "pruning")


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes by name: ``$EDGESLICE_RECIPES`` (``os.pathsep``-separated), the source tree's
    ``recipes/`` and the installed ``share/edgeslice/recipes``, in that order (existing folders only)."""
    dirs = [Path(p) for p in os.environ.get("EDGESLICE_RECIPES", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "recipes")
    dirs.append(Path(sys.prefix) / "share" / "edgeslice" / "recipes")
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def list_recipes() -> list[str]:
    """Names of the recipes found in :func:`recipe_dirs` (the first folder wins on a repeated name)."""
    return sorted({p.stem for d in recipe_dirs() for p in d.glob(f"*{RECIPE_SUFFIX}")})


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe file for a shipped recipe name or a path.

    Raises:
        ValueError: neither an existing file nor a known name (the message lists the known names).
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = p.name[: -len(RECIPE_SUFFIX)] if p.name.endswith(RECIPE_SUFFIX) else p.name
    if p.parent == Path("."):
        for d in recipe_dirs():
            candidate = d / f"{name}{RECIPE_SUFFIX}"
            if candidate.is_file():
                return candidate
    raise ValueError(f"unknown recipe {str(name_or_path)!r}: not a file; shipped recipes: {', '.join(list_recipes())}")


def read_recipe(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse a recipe file into (configuration dict, its ``description``); raises ValueError on bad TOML."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read recipe {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"recipe {path} is not valid TOML: {e}") from e
    about = {k: doc.pop(k) for k in ABOUT_KEYS if k in doc}
    if not all(isinstance(v, str) for v in about.values()):
        raise ValueError(f"recipe {path}: {', '.join(ABOUT_KEYS)} must be strings")
    return doc, about


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"slicing.theta=0.9"`` → (["slicing", "theta"], 0.9).

    The value follows TOML's scalar rules (``0.9`` float, ``3`` integer, ``true`` boolean, ``"x"`` string); a value
    that is not a TOML scalar is taken as a bare string (``model=mobilenetv3``).

    Raises:
        ValueError: no ``=``, or an empty key.
    """
    key, sep, raw = item.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {item!r} is not key=value (e.g. slicing.theta=0.9)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if isinstance(value, dict | list):
        raise ValueError(f"override {item!r}: only scalar values can be set")
    return key.split("."), value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``config`` with ``key=value`` overrides applied (dotted keys reach into ``[slicing]``/``[pruning]``).

    Raises:
        ValueError: a malformed override or an unknown key (the message names it and the valid keys).
    """
    from .config import CompressConfig

    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for item in overrides:
        path, value = parse_override(item)
        cls, target = _config_class(CompressConfig, path[:-1], item), out
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"setting {part!r} must be a table, got {target!r}")
        valid = sorted(f.name for f in fields(cls) if not _is_table(cls, f.name))
        if path[-1] not in valid:
            prefix = ".".join(path[:-1]) + "." if len(path) > 1 else ""
            raise ValueError(f"unknown setting {'.'.join(path)!r}; valid: {', '.join(prefix + v for v in valid)}")
        target[path[-1]] = value
    return out


def _is_table(cls: type, name: str) -> bool:
    """True when field ``name`` of ``cls`` holds a nested config (a recipe table)."""
    hint = typing.get_type_hints(cls).get(name)
    return isinstance(hint, type) and is_dataclass(hint)


def _config_class(root: type, path: list[str], item: str) -> type:
    cls = root
    for part in path:
        hint = typing.get_type_hints(cls).get(part)
        if not (isinstance(hint, type) and is_dataclass(hint)):
            raise ValueError(f"unknown setting {item.partition('=')[0]!r}: {part!r} is not a table")
        cls = hint
    return cls


def check_types(cls: type, values: dict[str, Any], where: str = "") -> None:
    """Refuse values whose TOML type does not fit the field (a string θ, a float seed), before the config sees them.

    Raises:
        ValueError: names the key, the expected type and the value.
    """
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            continue  # the config's from_dict reports unknown keys
        hint = hints[key]
        if isinstance(hint, type) and is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"setting '{where}{key}' must be a table, got {value!r}")
            check_types(hint, value, f"{where}{key}.")
            continue
        if not _fits(hint, value):
            raise ValueError(f"setting '{where}{key}' must be {_type_name(hint)}, got {value!r}")


def _fits(hint: Any, value: Any) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_fits(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(h) for h in typing.get_args(hint) if h is not type(None))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def config_from_dict(values: dict[str, Any]) -> CompressConfig:
    """Type-check ``values`` and build a :class:`~edgeslice.pipeline.CompressConfig` (ValueError when invalid)."""
    from .config import CompressConfig

    check_types(CompressConfig, values)
    values = dict(values)
    for key in NESTED:  # an integer where a float is expected is fine in TOML; the configs keep floats as floats
        if isinstance(values.get(key), dict):
            values[key] = _floats(typing.get_type_hints(CompressConfig)[key], values[key])
    return CompressConfig.from_dict(_floats(CompressConfig, values))


def _floats(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        k: float(v) if hints.get(k) is float and isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in values.items()
    }


def load_recipe(name_or_path: str | Path, overrides: Iterable[str] = ()) -> CompressConfig:
    """Load a recipe (shipped name or path), apply ``key=value`` overrides, and validate it.

    Args:
        name_or_path: a shipped recipe name (``mobilenetv3-fashion-mnist``) or a recipe file.
        overrides: ``key=value`` strings; dotted keys set ``[slicing]``/``[pruning]`` values.

    Returns:
        The :class:`~edgeslice.pipeline.CompressConfig`.

    Raises:
        ValueError: unknown recipe or key, bad TOML, or an invalid value (one-line message).
    """
    path = find_recipe(name_or_path)
    values, _ = read_recipe(path)
    try:
        return config_from_dict(apply_overrides(values, overrides))
    except ValueError as e:
        raise ValueError(f"recipe {path.name}: {e}") from None


def config_to_toml(config: dict[str, Any], *, header: str = "") -> str:
    """Render a ``CompressConfig.to_dict()`` as a recipe (``None`` values are left out: they are the defaults).

    The output is deterministic (fields in declaration order) and loads back to an equal config.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    tables = {k: v for k, v in config.items() if isinstance(v, dict)}
    for key, value in config.items():
        if value is not None and key not in tables:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} to a recipe")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    raise ValueError(f"cannot write {value!r} to a recipe")
