"""Typed configuration: dataclasses loaded from YAML, validated, with dotted overrides.

Every job reads one YAML file into a tree of dataclasses. Unknown keys, wrong types and invalid
values raise :class:`ConfigError` naming the dotted key (``model.tadn.alpha``) and the file, so a
typo never silently falls back to a default.

Example::

    @dataclass
    class Optim:
        lr: float = 1e-3
        kind: str = "adamw"

        def validate(self) -> None:          # optional hook, called after loading
            check_choice("kind", self.kind, ("adamw", "sgd"))

    @dataclass
    class Job:
        optim: Optim = field(default_factory=Optim)
        steps: int = 10

    cfg = load_config(Job, "job.yaml", ["optim.lr=3e-4", "steps=50"])

Rules: ``int`` accepts integers only (not ``True``), ``float`` accepts finite ints and floats
(YAML ``.nan`` and ``.inf`` are refused for every float key: none of them means anything there), ``bool``
accepts booleans only, ``Optional[X]`` accepts ``null``, ``list[X]``/``tuple[X, ...]`` accept
lists, ``dict[str, X]`` accepts mappings, nested dataclasses accept mappings. Override values are
parsed as YAML scalars (``a.b=3`` is an int, ``a.b=[1,2]`` a list, ``a.b=null`` None).
A ``validate(self)`` method on any dataclass is called after its fields are filled; raise
:class:`ConfigError` (or ``ValueError``, which is wrapped with the key prefix) from it.

YAML subset: plain mappings, lists and scalars. Anchors (``&name``), aliases (``*name``) and
merge keys (``<<:``) are refused with a one-line :class:`ConfigError` naming the file and line:
no shipped config uses them, and an alias lets a file of a kilobyte expand into gigabytes (the
"billion laughs"); write the repeated values out instead. A key given twice is refused too.
Values quoted in error messages are shortened (:func:`show_value`).

A key declared with :func:`path_field` holds a file or folder path: a leading ``~`` is expanded
(``data.path=~/prepared``), as every tool expands its path arguments. On a command line an argument
is an override when it reads ``dotted.key=value`` and names no existing file or folder
(:func:`is_override`), so a path with ``=`` in it stays a path (``./out=1`` when it does not exist).

A config is a YAML path, or the name of a built-in config (``demo``, ``eval/published``,
``model/short_only``): the repository's ``configs/`` in a checkout, ``hytrec_torchrec/configs/``
in an installed wheel (:func:`resolve_config`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "from_dict",
    "to_dict",
    "load_config",
    "resolve_config",
    "builtin_configs_dir",
    "builtin_config_names",
    "apply_overrides",
    "parse_override_value",
    "check_choice",
    "check_range",
    "show_value",
    "path_field",
    "is_override",
    "split_overrides",
]

#: longest value (as ``repr``) an error message quotes; longer ones are cut with ``...``
MAX_SHOWN = 80


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or invalid.

    The message always starts with the dotted key (and the source file when known).
    """


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 3, 8, 8, 8
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = MAX_SHOWN, MAX_SHOWN, MAX_SHOWN


def show_value(value: Any) -> str:
    """``repr(value)`` for an error message, at most :data:`MAX_SHOWN` characters (plus ``...``):
    a huge list or string is never formatted whole."""
    text = _SHORT.repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN] + "..."


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ConfigError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{key}: {show_value(value)} is not one of {list(choices)}")


def check_range(
    key: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise ``ConfigError`` unless ``lo <= value <= hi`` (open ends if requested)."""
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"{key}: {show_value(value)} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ConfigError(f"{key}: {show_value(value)} must be {'<' if hi_open else '<='} {hi}")


def path_field(default: Any) -> Any:
    """A dataclass field holding a path: ``~`` at its start is expanded when the config is loaded."""
    return dataclasses.field(default=default, metadata={"path": True})


_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")


def is_override(arg: str) -> bool:
    """Whether a command-line argument is a ``dotted.key=value`` override: its text before the first
    ``=`` is a dotted key (no ``/``) and it is not the name of an existing file or folder."""
    return _OVERRIDE.match(arg) is not None and not os.path.lexists(os.path.expanduser(arg))


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``args`` as (positional paths, overrides) by :func:`is_override`, ``~`` expanded in the paths."""
    paths = [os.path.expanduser(a) for a in args if not is_override(a)]
    return paths, [a for a in args if is_override(a)]


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _got(value: Any) -> str:
    """The given value with its type for a type error: ``str 'abc'``, ``null``."""
    return "null" if value is None else f"{type(value).__name__} {show_value(value)}"


_SCALARS = {bool: "true/false", int: "an integer", float: "a float", str: "a string"}


class _NonFinite(ConfigError):
    """A float key given NaN or infinity (reported as such, also through ``Optional[float]``)."""


def _expected(tp: Any) -> str:
    """What a value of type ``tp`` looks like in a config: ``an integer``, ``a float or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping for {tp.__name__}"
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    return _SCALARS.get(tp, _type_name(tp))


def _type_error(tp: Any, value: Any, key: str) -> ConfigError:
    return ConfigError(f"{key}: expected {_expected(tp)}, got {_got(value)}")


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    """``bool``, ``int``, ``float`` (finite: ``.nan``/``.inf`` make no sense in any config key) and
    ``str`` values; raise ConfigError naming ``key``, the expected type and the given one."""
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool), str: isinstance(value, str)}[tp]
    if not ok:
        raise _type_error(tp, value, key)
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise _NonFinite(f"{key}: expected a finite float, got {show_value(value)} (NaN and infinity are "
                             "not valid config values)")
    return value


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert a YAML value to type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except _NonFinite:
                raise
            except ConfigError:
                pass
        raise _type_error(tp, value, key)
    if origin is typing.Literal:
        check_choice(key, value, args)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _type_error(tp, value, key)
        return from_dict(tp, value, prefix=key)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(tp, value, key)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _type_error(tp, value, key)
        k_tp, v_tp = args if args else (Any, Any)
        return {
            _coerce(k_tp, k, f"{key}.<key>"): _coerce(v_tp, v, _join(key, str(k)))
            for k, v in value.items()
        }
    if tp in _SCALARS:
        return _coerce_scalar(tp, value, key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _type_error(tp, value, key)


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively, validating every key.

    Args:
        cls: the dataclass type.
        data: mapping of field name to value; missing fields keep their defaults.
        prefix: dotted path of this node, used in error messages.
    Raises:
        ConfigError: unknown key, wrong type, missing required field or failed ``validate()``.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_join(prefix, str(unknown[0]))}: unknown key (valid keys here: {sorted(fields)})"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
            if f.metadata.get("path") and isinstance(kwargs[name], str):
                kwargs[name] = os.path.expanduser(kwargs[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(msg if not prefix else f"{prefix}.{msg}") from None
        except ValueError as exc:
            raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass tree → plain dict/list/scalars (YAML/JSON serialisable)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


#: first characters of a value that YAML reads as something other than plain text: a directive
#: (``%``), reserved indicators (``@``, backtick), an anchor or alias (``&``, ``*``, refused in
#: configs), a block scalar (``|``, ``>``: the empty string) or a comment (``#``: null). An override
#: starting with one of them is taken as written, so ``timestamp_format=%Y-%m-%d`` and
#: ``csv_delimiter=|`` work unquoted.
_VERBATIM_STARTS = "%@`&*|>#"


def parse_override_value(key: str, raw: str) -> Any:
    """The value of the override ``key=raw``: a YAML scalar or flow collection (``5``, ``true``,
    ``[1, 2]``, ``null``), the text itself when it starts with a character YAML cannot read there
    (:data:`_VERBATIM_STARTS`), and ``""`` for nothing. Other unreadable YAML raises
    ``ConfigError`` saying how to quote the value."""
    text = raw.strip()
    if not text:
        return ""
    if text[0] in _VERBATIM_STARTS:
        return text
    try:
        return _load_yaml(raw)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{key}: cannot parse override value {show_value(raw)} as YAML ({first}); to pass it as "
            f"text, quote it for YAML inside quotes for the shell: {key}='\"{text}\"'") from exc


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (in place) and return it.

    Values are read by :func:`parse_override_value`. Intermediate mappings are created as
    needed; whether the key exists is checked later by :func:`from_dict`.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {show_value(item)}: expected key=value")
        dotted, raw = item.split("=", 1)
        parts = [p for p in dotted.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {show_value(item)}: empty key")
        value = parse_override_value(dotted.strip(), raw)
        node = data
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is not a mapping, cannot set {dotted}")
            node = child
        node[parts[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for configs: refuses a mapping with the same key twice (the plain
    loader keeps the last one without a word, so a pasted second ``lr:`` silently wins), anchors
    and aliases (an alias bomb of a kilobyte expands into gigabytes) and merge keys (module
    docstring)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Refuse an anchor or alias before anything is composed from it."""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise yaml.composer.ComposerError(
                None, None, f"line {mark.line + 1}: YAML anchors and aliases (&{event.anchor} / *{event.anchor}) "
                "are not supported in configs; write the value out", mark)
        return super().compose_node(parent, index)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            raise yaml.constructor.ConstructorError(
                None, None, f"line {key_node.start_mark.line + 1}: YAML merge keys (<<) are not supported in "
                "configs; write the keys out", key_node.start_mark)
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _load_yaml(text: str) -> Any:
    """``text`` parsed by :class:`_UniqueKeyLoader` (the YAML subset configs use)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def builtin_configs_dir() -> Path:
    """The built-in configs: ``hytrec_torchrec/configs`` of an installed wheel, else the
    ``configs/`` folder beside the package in a repository checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"


def builtin_config_names() -> list[str]:
    """Names of the built-in configs (``demo``, ``eval/published``, ...), sorted."""
    root = builtin_configs_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")) if root.is_dir() else []


def resolve_config(path: str | Path) -> Path:
    """``path`` when it is a file, else the built-in config of that name (``demo`` →
    ``configs/demo.yaml``). Raises ``ConfigError`` naming both when neither exists."""
    p = Path(path)
    if p.is_file():
        return p
    if p.suffix in ("", ".yaml") and not p.is_absolute():
        builtin = builtin_configs_dir() / p.with_suffix(".yaml")
        if builtin.is_file():
            return builtin
    raise ConfigError(f"{path}: config file not found, nor a built-in config "
                      f"(built-in: {', '.join(builtin_config_names()) or 'none'})")


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()
) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides.

    Errors name the dotted key and the file, e.g.
    ``configs/demo.yaml: model.tadn.alpha: 1.5 must be <= 1``, or the override that set the key,
    ``override 'optim.lr=fast' (config configs/demo.yaml): optim.lr: expected a float, got str 'fast'``.
    """
    data: dict[str, Any] = {}
    source = str(path) if path is not None else "<defaults>"
    if path is not None:
        p = resolve_config(path)
        try:
            loaded = _load_yaml(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping")
        data = loaded or {}
    try:
        apply_overrides(data, overrides)
        return from_dict(cls, data)
    except ConfigError as exc:
        msg = str(exc)
        key = msg.split(":", 1)[0].strip()
        given = [o for o in overrides if o.split("=", 1)[0].strip() == key]
        if given:  # the value came from the command line, not from the file
            raise ConfigError(f"override {show_value(given[-1])} (config {source}): {msg}") from None
        raise ConfigError(f"{source}: {msg}") from None
