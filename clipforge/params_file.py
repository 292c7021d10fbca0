"""Loading params: read a YAML file (and the ``base`` files it names), apply ``--set``
overrides, validate against ``clipforge.config.Params``. The one entry point is
:func:`load_params`; every problem is a :class:`ParamsError` whose lines name the file (or the
``--set``) a bad value came from and its dotted key, before any stage work starts.

A params file is YAML with one section per stage. A file may name a ``base`` file (relative to
itself) whose values it overrides, so a profile (``profiles/tiny.yaml``) states only what
differs from ``params.yaml``. ``--set section.key=value`` overrides are applied last and parsed
as YAML scalars (``--set student_model.steps=10``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from clipforge.config import Params, deep_merge

BASE_KEY = "base"
DEFAULT_PARAMS_FILE = "params.yaml"  # what the CLI and the Dagster resource load unless told otherwise
# Shown errors per load: one bad input gives one line; a file of typos gives a readable few.
MAX_LINES = 8


class ParamsError(ValueError):
    """Bad params: a missing or malformed file, an unknown key, a wrong type or value.

    ``str(error)`` is one line per problem: ``<file or --set>: <section.key>: <what is wrong>``.
    """


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"{_shown(path)}: no such params file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ParamsError(f"{_shown(path)}{where}: not valid YAML: {err.problem or err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ParamsError(f"{_shown(path)}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{_shown(path)}: the top level must be a mapping of sections, not {type(data).__name__}")
    return data


def _leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in data.items():
        path = (*prefix, str(key))
        out.append(path)
        if isinstance(value, dict):
            out += _leaves(value, path)
    return out


def _read_tree(path: Path, sources: dict[tuple[str, ...], str], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file merged over its bases; ``sources`` learns which file set each key."""
    resolved = path.resolve()
    if resolved in seen:
        raise ParamsError(f"{_shown(path)}: {BASE_KEY}: params files name each other in a cycle")
    own = _read_yaml(path)
    base_name = own.pop(BASE_KEY, None)
    merged = own
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ParamsError(f"{_shown(path)}: {BASE_KEY}: must be a file name, got {base_name!r}")
        base_path = path.parent / base_name
        if not base_path.is_file():
            raise ParamsError(f"{_shown(path)}: {BASE_KEY}: no such params file {_shown(base_path)}")
        merged = deep_merge(_read_tree(base_path, sources, (*seen, resolved)), own)
    for key in _leaves(own):  # after the base's: this file's values win
        _note(sources, key, _shown(path))
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    keys = [part for part in key.strip().split(".") if part]
    if not sep or not keys:
        raise ParamsError(f"--set {text}: expected section.key=value")
    try:
        return keys, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ParamsError(f"--set {text}: the value is not valid YAML ({err})") from None


def apply_overrides(
    data: dict[str, Any], overrides: list[str], sources: dict[tuple[str, ...], str] | None = None
) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ParamsError(f"--set {text}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        node[keys[-1]] = value
        if sources is not None:
            _note(sources, tuple(keys), f"--set {text}")
    return data


def _note(sources: dict[tuple[str, ...], str], key: tuple[str, ...], source: str) -> None:
    # Re-inserted, so the dict's order is the order values were last set in.
    sources.pop(key, None)
    sources[key] = source


def _source_of(loc: tuple[str, ...], sources: dict[tuple[str, ...], str], default: str) -> str:
    """Who set the value at ``loc``: the key itself or its nearest parent; for a whole section
    (a rule across its fields), whoever set one of its fields last."""
    inside = [source for key, source in sources.items() if key[: len(loc)] == loc and len(key) > len(loc)]
    if inside:
        return inside[-1]
    for end in range(len(loc), 0, -1):
        if loc[:end] in sources:
            return sources[loc[:end]]
    return default


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "missing: every key must be set"
    if kind == "extra_forbidden":
        return "unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    if "input" in error and not isinstance(error["input"], (dict, list)):
        return f"{message} (got {error['input']!r})"
    return message


def _lines(err: ValidationError, sources: dict[tuple[str, ...], str], top: str) -> list[str]:
    lines = []
    for error in err.errors():
        # Drop the discriminator parts pydantic adds for unions ("OpenClipSpec", "int").
        loc = tuple(str(part) for part in error["loc"] if not str(part)[:1].isupper())
        key = ".".join(loc) or "(top level)"
        where = top if error["type"] == "missing" else _source_of(loc, sources, top)
        lines.append(f"{where}: {key}: {_describe(error)}")
    unique = list(dict.fromkeys(lines))
    if len(unique) > MAX_LINES:
        unique = [*unique[:MAX_LINES], f"... and {len(unique) - MAX_LINES} more"]
    return unique


def load_params(path: str | Path = DEFAULT_PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    """Read, merge and validate a params file; the single entry point for configuration."""
    path = Path(path)
    sources: dict[tuple[str, ...], str] = {}
    data = _read_tree(path, sources)
    data = apply_overrides(data, list(overrides or []), sources)
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError("\n".join(_lines(err, sources, _shown(path)))) from None
