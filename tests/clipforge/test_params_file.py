"""Loading params: every bad input is one line naming where it came from and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clipforge.params_file import ParamsError, apply_overrides, load_params, parse_override
from tests.conftest import REPO


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_parse_override() -> None:
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=") == (["a", "b"], None)
    with pytest.raises(ParamsError, match=r"--set no-equals-sign: expected section\.key=value"):
        apply_overrides({}, ["no-equals-sign"])


def test_an_override_names_itself_and_the_key() -> None:
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", ["student_model.steps=-5"])
    assert str(err.value) == (
        "--set student_model.steps=-5: student_model.steps: input should be greater than or equal to 1 (got -5)"
    )


def test_a_value_from_a_profile_names_the_profile(tmp_path: Path) -> None:
    profile = _write(tmp_path / "mine.yaml", {"base": str(REPO / "params.yaml"), "student_model": {"lr": "fast"}})
    with pytest.raises(ParamsError) as err:
        load_params(profile)
    (line,) = str(err.value).splitlines()
    assert line.endswith(
        "mine.yaml: student_model.lr: input should be a valid number, unable to parse string as a number (got 'fast')"
    )


def test_a_value_from_the_base_names_the_base(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.yaml", yaml.safe_load((REPO / "params.yaml").read_text()))
    text = base.read_text().replace("num_captions: 5", "num_captions: 0")
    base.write_text(text)
    profile = _write(tmp_path / "profile.yaml", {"base": "base.yaml", "profile": "mine"})
    with pytest.raises(ParamsError, match=r"base\.yaml: synthetic_captions\.num_captions: input should be greater"):
        load_params(profile)


def test_a_missing_key_names_the_file_loaded(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    del data["student_model"]["lr"]
    params = _write(tmp_path / "copy.yaml", data)
    with pytest.raises(ParamsError) as err:
        load_params(params)
    assert str(err.value).endswith("copy.yaml: student_model.lr: missing: every key must be set")


def test_malformed_yaml_gives_file_line_and_column(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.yaml", "student_model:\n  steps: 3\n lr: [1\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml:3:\d+: not valid YAML"):
        load_params(bad)


def test_base_files_must_exist_and_not_cycle(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ParamsError, match="cycle"):
        load_params(tmp_path / "a.yaml")
    _write(tmp_path / "c.yaml", "base: nope.yaml\n")
    with pytest.raises(ParamsError, match=r"c\.yaml: base: no such params file .*nope\.yaml"):
        load_params(tmp_path / "c.yaml")


def test_many_typos_are_listed_a_line_each(tmp_path: Path) -> None:
    profile = _write(
        tmp_path / "typos.yaml",
        {"base": str(REPO / "params.yaml"), "student_model": {f"stepz{i}": 1 for i in range(12)}},
    )
    with pytest.raises(ParamsError) as err:
        load_params(profile)
    lines = str(err.value).splitlines()
    assert len(lines) == 9 and lines[-1] == "... and 4 more"
    assert all(line.endswith(": unknown key") for line in lines[:-1])
