"""``clipforge benchmark latency`` on MobileCLIP-nano against a tiny open_clip baseline, 2 repeats."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from chain.cli import main
from export.latency_benchmark import render_markdown, render_table
from training.eval.timing import FORM_LABELS
from training.models.students import build_student, tower_params

# clipforge's own small open_clip config (training/model_configs) stands in for ViT-B-16.
BASELINE = "cf-tiny-vit-student"


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    """Exit code, printed text and JSON of one CLI run."""
    path = tmp_path_factory.mktemp("latency") / "latency.json"
    argv = ["benchmark", "latency", "--variants", "nano", "--baseline", BASELINE]
    argv += ["--repeats", "2", "--warmup", "1", "--threads", "1", "--json", str(path), "--markdown"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    return code, printed.getvalue(), json.loads(path.read_text())


def _check_timings(forms: dict[str, Any]) -> None:
    for towers in forms.values():
        for tower in ("image", "text"):
            timing = towers[tower]
            assert math.isfinite(timing["p90_ms"]) and 0 < timing["median_ms"] <= timing["p90_ms"]
            assert timing["repeats"] == 2 and timing["warmup"] == 1
        assert towers["total_ms"] == pytest.approx(towers["image"]["median_ms"] + towers["text"]["median_ms"])


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_cli_exits_zero_and_prints_the_tables(benchmark: tuple[int, str, dict[str, Any]]) -> None:
    code, printed, result = benchmark
    assert code == 0
    lines = printed.splitlines()
    # Plain table: the baseline's two forms, the variant's four, each on its own line.
    assert sum(1 for line in lines if any(label in line for label in FORM_LABELS.values())) >= 2 + 4
    assert any(line.startswith("MobileCLIP-nano") for line in lines)
    assert render_markdown(result) in printed


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_json_holds_every_figure(benchmark: tuple[int, str, dict[str, Any]]) -> None:
    _, _, result = benchmark
    assert set(result) == {"machine", "settings", "baseline", "variants"}
    assert result["settings"]["repeats"] == 2 and result["settings"]["torch_threads"] == 1
    assert result["settings"]["onnxruntime_intra_op_threads"] == 1
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["cpu"]

    baseline = result["baseline"]
    assert baseline["name"] == BASELINE and set(baseline["forms"]) == {"torch", "onnx"}
    _check_timings(baseline["forms"])

    (variant,) = result["variants"]
    assert variant["name"] == "MobileCLIP-nano"
    assert set(variant["forms"]) == {"torch", "torch_folded", "onnx", "onnx_folded"}
    _check_timings(variant["forms"])
    # The folded forms time a really folded copy: nano has MobileOne/RepMixer/Text-RepMixer blocks.
    assert sum(variant["folded_blocks"].values()) > 0
    with torch.device("meta"):
        nano = build_student("MobileCLIP-nano")
    image, text = tower_params(nano.clip)
    assert variant["params_m"] == pytest.approx({"image": image / 1e6, "text": text / 1e6})
    assert (variant["image_size"], variant["context_length"]) == (nano.info.image_size, nano.info.context_length)

    # Speedup = baseline image + text median (same runtime) / the form's image + text median.
    for form, speedup in variant["speedup_vs_baseline"].items():
        runtime = form.removesuffix("_folded")  # the baseline has nothing to fold
        expected = baseline["forms"][runtime]["total_ms"] / variant["forms"][form]["total_ms"]
        assert speedup == pytest.approx(expected)
    assert set(variant["speedup_vs_baseline"]) == set(variant["forms"])


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_renderings_show_the_recorded_figures(benchmark: tuple[int, str, dict[str, Any]]) -> None:
    _, _, result = benchmark
    variant = result["variants"][0]
    markdown = render_markdown(result).splitlines()
    (row,) = [line for line in markdown if line.startswith("| MobileCLIP-nano |")]
    folded = variant["forms"]["onnx_folded"]
    assert f"{folded['image']['median_ms']:.2f} + {folded['text']['median_ms']:.2f}" in row
    assert f"{variant['speedup_vs_baseline']['torch_folded']:.2f}x" in row
    assert any(line.startswith(f"| {BASELINE} |") for line in markdown)
    table = render_table(result)
    assert f"{variant['forms']['torch']['total_ms']:9.2f}" in table


@pytest.mark.parametrize(
    ("options", "reason"),
    [(["--variants", "nano", "no-such-model"], "no-such-model"), (["--variants", "nano", "--repeats", "0"], "repeats")],
)
def test_bad_options_are_refused_before_any_timing(
    options: list[str], reason: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "latency.json"
    assert main(["benchmark", "latency", *options, "--baseline", BASELINE, "--json", str(path)]) == 2
    captured = capsys.readouterr()
    assert reason in captured.err and "timing" not in captured.out and not path.exists()
