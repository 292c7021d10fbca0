"""The clipforge command: bad params are one line naming the file (or --set) and the key, exit
code 2, before any stage work or MLflow run starts; a failed gate is exit code 3.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chain.cli import EXIT_USAGE, main
from tests.conftest import REPO

PARAMS = str(REPO / "params.yaml")


def _profile(tmp_path: Path, name: str, data: object) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return name


def _full_copy_without(tmp_path: Path, section: str, key: str) -> str:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    del data[section][key]
    return _profile(tmp_path, "copy.yaml", data)


# (argv after the stage name, a function of tmp_path writing any file it needs, what the line says)
BAD_INPUTS = [
    (lambda t: ["--params", "missing.yaml"], "missing.yaml: no such params file"),
    (
        lambda t: ["--params", _profile(t, "bad.yaml", "student_model:\n  steps: 3\n lr: [1\n")],
        "bad.yaml:3:",
    ),
    (lambda t: ["--params", _profile(t, "list.yaml", "- a\n- b\n")], "list.yaml: the top level must be a mapping"),
    (
        lambda t: ["--params", _profile(t, "typo.yaml", {"base": PARAMS, "studnet_model": {"steps": 3}})],
        "typo.yaml: studnet_model: unknown key",
    ),
    (
        lambda t: ["--params", PARAMS, "--set", "student_model.stepz=3"],
        "--set student_model.stepz=3: student_model.stepz: unknown key",
    ),
    (
        lambda t: ["--params", PARAMS, "--set", "student_model.steps=abc"],
        "--set student_model.steps=abc: student_model.steps: input should be a valid integer",
    ),
    (
        lambda t: ["--params", PARAMS, "--set", "student_model.steps=-5"],
        "--set student_model.steps=-5: student_model.steps: input should be greater than or equal to 1 (got -5)",
    ),
    (
        lambda t: ["--params", _profile(t, "lr.yaml", {"base": PARAMS, "student_model": {"lr": "fast"}})],
        "lr.yaml: student_model.lr: input should be a valid number",
    ),
    (
        lambda t: ["--params", PARAMS, "--set", "student_model.steps"],
        "--set student_model.steps: expected section.key=value",
    ),
    (
        lambda t: ["--params", _profile(t, "orphan.yaml", {"base": "nope.yaml"})],
        "orphan.yaml: base: no such params file",
    ),
    (lambda t: ["--params", _full_copy_without(t, "student_model", "lr")], "copy.yaml: student_model.lr: missing"),
    (
        lambda t: ["--params", PARAMS, "--set", "teacher_models.mode=foo"],
        "--set teacher_models.mode=foo: teacher_models.mode: input should be 'bootstrap' or 'pretrained'",
    ),
    (
        lambda t: ["--params", _profile(t, "pre.yaml", {"base": PARAMS, "teacher_models": {"mode": "pretrained"}})],
        "pre.yaml: teacher_models: mode pretrained needs a non-empty 'teachers' list",
    ),
    (
        lambda t: ["--params", PARAMS, "--set", "student_model.steps.x=1"],
        "--set student_model.steps.x=1: student_model.steps is a value, not a section",
    ),
]


@pytest.mark.parametrize(("argv", "line"), BAD_INPUTS, ids=[expected for _, expected in BAD_INPUTS])
def test_bad_params_exit_2_with_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv, line: str
) -> None:
    monkeypatch.chdir(tmp_path)
    args = argv(tmp_path)
    code = main(["student_model", *args, "--no-progress"])
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE == 2
    assert out == ""
    (shown,) = err.strip().splitlines()
    assert line in shown
    # Nothing started: no MLflow store, no lake, no reports.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in tmp_path.iterdir() if p.suffix == ".yaml"
    )


def test_the_installed_command_exits_2_too(tmp_path: Path) -> None:
    clipforge = Path(sys.executable).with_name("clipforge")
    result = subprocess.run(
        [str(clipforge), "chain", "--params", PARAMS, "--set", "student_model.steps=-5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "--set student_model.steps=-5: student_model.steps: input should be greater than or equal to 1 (got -5)"
    ]
    assert not any(tmp_path.iterdir())
