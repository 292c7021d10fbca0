"""``clipforge experiment``: arms are config alone, and the comparison is computed right."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from clipforge.params_file import ParamsError, load_params
from tests.conftest import REPO, params_with
from tests.training.benchmark_helpers import write_clip_benchmark_classification, write_clip_benchmark_retrieval
from tests.training.student_helpers import one_thread  # noqa: F401 (autouse)
from training.experiments.outputs import EXPERIMENT_PARAMS, ExperimentFiles
from training.experiments.results import steps_to_reach, summarize
from training.experiments.run import run_experiment

FILES = ExperimentFiles("experiment")  # params.yaml's experiment.name
EVALS_FILE, PLOT_FILE, REPORT_FILE, RESULT_FILE = FILES.evals, FILES.plot, FILES.report, FILES.result

ARMS = [
    {
        "name": "plain",
        "description": "CLIP only",
        "student_model": {"distill_lambda": 0.0, "use_synthetic_captions": False},
    },
    # Nothing in the code knows this arm: a name, a description and student_model keys.
    {
        "name": "custom-lr",
        "description": "distill at a quarter, lower lr",
        "student_model": {"distill_lambda": 0.25, "lr": 0.001},
    },
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embedded_corpus")
    write_clip_benchmark_classification(root / "benchmark" / "colour")
    write_clip_benchmark_retrieval(root / "benchmark" / "caps")
    return root


def test_an_arm_is_config_alone(dr_folder: Path, corpus: Path, tmp_path: Path) -> None:
    params = params_with(
        student_model={"batch_size": 6, "warmup_steps": 1, "log_every": 1},
        experiment={"seeds": [0, 1], "steps": 3, "eval_every": 2, "arms": ARMS},
    )
    result = run_experiment(params, dr_folder, corpus, tmp_path, track=False)

    evals = pd.read_csv(tmp_path / EVALS_FILE)
    # Every arm at every seed, scored at eval_every and at the last step.
    assert sorted(set(evals["arm"])) == ["custom-lr", "plain"]
    assert sorted(evals.groupby(["arm", "seed"]).size().to_dict().values()) == [2, 2, 2, 2]
    assert set(evals["step"]) == {2, 3}
    assert {"colour", "caps", "zeroshot_top1_mean", "retrieval_mean_r1"} <= set(evals.columns)
    # The arms' configs changed the training: same seed and data, different losses.
    losses = {(r["arm"], r["seed"]): r["final_loss"] for r in result["runs"]}
    assert all(losses[("plain", s)] != pytest.approx(losses[("custom-lr", s)]) for s in (0, 1))

    assert result["baseline"] == "plain" and set(result["arms"]) == {"plain", "custom-lr"}
    assert json.loads((tmp_path / RESULT_FILE).read_text())["arms"]["custom-lr"]["seeds"] == 2
    report = (tmp_path / REPORT_FILE).read_text()
    assert "**custom-lr**: distill at a quarter, lower lr" in report and PLOT_FILE.split("/")[-1] in report
    assert (tmp_path / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"


def test_the_validation_split_is_scored_instead_of_the_benchmark(dr_folder: Path, corpus: Path, tmp_path: Path) -> None:
    # Tuning reads validation/ (other seeds); a corpus whose benchmark/ is missing proves it.
    tuning = tmp_path / "corpus"
    write_clip_benchmark_classification(tuning / "validation" / "colour")
    write_clip_benchmark_retrieval(tuning / "validation" / "caps")
    params = params_with(
        student_model={"batch_size": 6, "warmup_steps": 1},
        experiment={"seeds": [0], "steps": 2, "eval_every": 2, "split": "validation", "arms": ARMS[:1]},
    )
    result = run_experiment(params, dr_folder, tuning, tmp_path / "out", track=False)
    assert result["split"] == "validation"
    assert "VALIDATION split" in (tmp_path / "out" / REPORT_FILE).read_text()
    assert set(pd.read_csv(tmp_path / "out" / EVALS_FILE).columns) >= {"colour", "zeroshot_top1_mean"}
    with pytest.raises(FileNotFoundError):
        run_experiment(
            params.model_copy(update={"experiment": params.experiment.model_copy(update={"split": "test"})}),
            dr_folder,
            tuning,
            tmp_path / "out2",
            track=False,
        )


def test_a_bad_arm_fails_when_the_params_load(tmp_path: Path) -> None:
    params = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(params)
    bad = '[{"name": "x", "description": "typo", "student_model": {"distil_lambda": 0.5}}]'
    with pytest.raises(ParamsError, match=r"arm 'x'.*distil_lambda"):
        load_params(path, [f"experiment.arms={bad}"])
    with pytest.raises(ParamsError, match="cannot set seed"):
        load_params(path, ['experiment.arms=[{"name": "y", "description": "d", "student_model": {"seed": 3}}]'])


def _evals(rows: list[tuple[str, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"arm": a, "seed": s, "step": t, "shape": z, "zeroshot_top1_mean": z, "retrieval_mean_r1": z / 2}
            for a, s, t, z in rows
        ]
    )


def test_summary_against_the_baseline() -> None:
    evals = _evals(
        [
            ("a", 0, 10, 0.10), ("a", 0, 20, 0.20), ("a", 1, 10, 0.12), ("a", 1, 20, 0.30),
            ("c", 0, 10, 0.24), ("c", 0, 20, 0.40), ("c", 1, 10, 0.28), ("c", 1, 20, 0.50),
        ]
    )  # fmt: skip
    seconds = pd.DataFrame([{"arm": "a", "seconds_per_step": 0.5}, {"arm": "c", "seconds_per_step": 0.7}])
    summary = summarize(evals, seconds, ["a", "c"])
    a, c = summary["arms"]["a"], summary["arms"]["c"]
    assert a["zeroshot_top1_mean"]["mean"] == pytest.approx(0.25) and c["zeroshot_top1_mean"]["max"] == 0.5
    assert c["zeroshot_top1_mean"]["std"] == pytest.approx(pd.Series([0.4, 0.5]).std())
    # c's final seeds (0.4, 0.5) lie above a's (0.2, 0.3); c's mean curve (0.26 at step 10)
    # already passes a's final mean (0.25).
    assert c["vs_baseline"] == {
        "zeroshot_gain": pytest.approx(0.2),
        "seed_ranges_overlap": False,
        "steps_to_baseline_final": 10,
    }
    assert a["vs_baseline"]["steps_to_baseline_final"] == 20 and a["vs_baseline"]["seed_ranges_overlap"]
    assert c["seconds_per_step"] == 0.7
    assert steps_to_reach(pd.Series([0.1, 0.2], index=[5, 10]), 0.3) is None


def test_online_arms_run_the_teachers(dr_folder: Path, corpus: Path, teacher_dir: Path, tmp_path: Path) -> None:
    """An arm that sets teacher_embeddings: online trains against the teachers run on its
    batches (not the stored embeddings); the experiment refuses to run it without them."""
    fd = {"fd": 100.0}
    arms = [
        {"name": "stored", "description": "FD, stored", "student_model": {"distill_lambda": 0.0, "kd": fd}},
        {
            "name": "online",
            "description": "FD, online",
            "student_model": {"distill_lambda": 0.0, "kd": fd, "teacher_embeddings": "online"},
        },
    ]
    params = params_with(
        student_model={"batch_size": 6, "warmup_steps": 1},
        experiment={"seeds": [0], "steps": 2, "eval_every": 2, "arms": arms},
    )
    with pytest.raises(ValueError, match="teacher_models"):
        run_experiment(params, dr_folder, corpus, tmp_path / "no", track=False)
    result = run_experiment(params, dr_folder, corpus, tmp_path / "yes", teacher_models=teacher_dir, track=False)
    losses = {r["arm"]: r["final_loss"] for r in result["runs"]}
    # Same seed, data and loss: only the teachers' embeddings differ (run, not read).
    assert losses["stored"] != pytest.approx(losses["online"])


def test_every_experiment_params_file_loads_with_its_own_outputs() -> None:
    names = [load_params(REPO / path).experiment.name for path in EXPERIMENT_PARAMS]
    assert names[0] == "experiment" and len(set(names)) == len(names)
    kd = load_params(REPO / "profiles/experiment-clip-kd.yaml").experiment
    assert [arm.name[0] for arm in kd.arms] == ["e", "f", "g", "h"]
