"""Tests for the typed YAML config loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from hytrec_torchrec.config import ConfigError, check_range, load_config, to_dict


@dataclass
class _Inner:
    alpha: float = 0.5
    pattern: str = "TTTS"
    sizes: list[int] = field(default_factory=lambda: [1, 2])

    def validate(self) -> None:
        check_range("alpha", self.alpha, 0.0, 1.0)


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    steps: int = 10
    name: Optional[str] = None
    flag: bool = False


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(_Outer, _write(tmp_path, "steps: 3\ninner:\n  alpha: 0.25\n"),
                      ["inner.sizes=[4,5]", "name=run1", "flag=true"])
    assert cfg.steps == 3 and cfg.inner.alpha == 0.25 and cfg.inner.sizes == [4, 5]
    assert cfg.name == "run1" and cfg.flag is True
    assert to_dict(cfg)["inner"]["pattern"] == "TTTS"


@pytest.mark.parametrize(
    "text,overrides,needle",
    [
        ("stepz: 3\n", [], "stepz: unknown key"),
        ("", ["inner.alpah=0.1"], "inner.alpah: unknown key"),
        ("steps: 3.5\n", [], "steps: expected an integer"),
        ("steps: true\n", [], "steps: expected an integer"),
        ("inner:\n  alpha: 1.5\n", [], "inner.alpha: 1.5 must be <= 1"),
        ("inner:\n  sizes: [1, x]\n", [], "inner.sizes[1]: expected an integer"),
        ("", ["steps"], "expected key=value"),
        ("- 1\n", [], "top level must be a mapping"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, overrides: list[str], needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(_Outer, path, overrides)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(_Outer, "/nonexistent/x.yaml")


def test_an_override_error_names_the_override_not_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "steps: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(_Outer, path, ["steps=many"])
    assert str(info.value).startswith(f"override 'steps=many' (config {path}): steps: expected an integer")
    with pytest.raises(ConfigError) as info:  # a bad value in the file is still the file's
        load_config(_Outer, _write(tmp_path, "steps: many\n"), ["inner.alpha=0.5"])
    assert str(info.value).startswith(f"{path}: steps: expected an integer")


def test_yaml_subset_refuses_anchors_aliases_and_merge_keys(tmp_path: Path) -> None:
    """Issue 43 BAD 14: an alias bomb is refused before it expands; merge keys have one rule."""
    bomb = "name: [&a [x, x, x], &b [*a, *a, *a], &c [*b, *b, *b]]\n"
    with pytest.raises(ConfigError, match=r"c.yaml: invalid YAML: line 1: YAML anchors and aliases"):
        load_config(_Outer, _write(tmp_path, bomb))
    with pytest.raises(ConfigError, match=r"line 2: YAML merge keys \(<<\) are not supported"):
        load_config(_Outer, _write(tmp_path, "inner:\n  <<: {alpha: 0.5}\n"))
    with pytest.raises(ConfigError, match="YAML anchors and aliases"):
        load_config(_Outer, None, ["name=[&a 1, *a]"])


def test_error_messages_shorten_long_values(tmp_path: Path) -> None:
    """A huge value is quoted in a bounded message, never formatted whole."""
    from hytrec_torchrec.cli import first_line
    from hytrec_torchrec.config import MAX_SHOWN, show_value

    assert len(show_value(list(range(10**6)))) <= MAX_SHOWN + 3
    assert len(show_value("x" * 10**6)) <= MAX_SHOWN + 3
    with pytest.raises(ConfigError) as info:
        load_config(_Outer, _write(tmp_path, "name: [" + ", ".join(["long"] * 100_000) + "]\n"))
    assert len(first_line(info.value)) < 300


@pytest.mark.parametrize("raw", ["%Y-%m-%d %H:%M:%S", "%d/%m/%Y", "@home", "`tick`", "|", ">", "#7", "&a", "*b"])
def test_an_override_yaml_cannot_read_is_taken_as_written(raw: str) -> None:
    cfg = load_config(_Outer, None, [f"name={raw}"])
    assert cfg.name == raw


def test_override_values_yaml_reads_keep_their_types() -> None:
    cfg = load_config(_Outer, None, ["name='%quoted'", "steps=7", "inner.sizes=[3]", "flag=yes"])
    assert (cfg.name, cfg.steps, cfg.inner.sizes, cfg.flag) == ("%quoted", 7, [3], True)


@pytest.mark.parametrize("raw", ["[1, 2", "{a", '"open', "!custom x"])
def test_an_unreadable_override_says_how_to_quote_it(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_Outer, None, [f"name={raw}"])
    message = str(info.value)
    assert message.startswith(f"override 'name={raw}'") and "cannot parse override value" in message
    assert f"""name='"{raw}"'""" in message


def test_the_documented_prep_timestamp_format_override_loads() -> None:
    from data_prep.config import PrepConfig

    cfg = load_config(PrepConfig, None, ["timestamp_format=%Y-%m-%d %H:%M:%S", "csv_delimiter=|"])
    assert (cfg.timestamp_format, cfg.csv_delimiter) == ("%Y-%m-%d %H:%M:%S", "|")
