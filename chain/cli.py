"""``clipforge`` command line: one subcommand per stage (what DVC runs), plus ``chain``.

clipforge <stage> [--params FILE] [--set section.key=value ...] [--no-progress]
clipforge chain   [--params FILE] [--set ...] [--from STAGE] [--to STAGE]
clipforge experiment [--params FILE] [--set ...] [--no-progress]
clipforge stages | models | summary
clipforge benchmark latency [--variants nano S0 ...] [--json PATH] [--markdown]
clipforge export  (--student FOLDER | --variant NAME) [--out DIR] [--precision P] [--formats coreml,onnx]

Exit codes: 0 done, 2 usage or params error (one line naming the file and key, before any
work), 3 a quality gate failed (downstream stages must not run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar, get_args

from chain.runner import GateFailed, StageReport, read_report, resolve_inputs, run_stage
from chain.spec import CHAIN, STAGES
from clipforge.config import Params, Precision
from clipforge.params_file import DEFAULT_PARAMS_FILE, ParamsError, load_params
from clipforge.progress import bar_progress, no_progress

T = TypeVar("T")

EXIT_GATE_FAILED = 3
EXIT_USAGE = 2  # argparse's code for bad arguments


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help=f"params file (default: {DEFAULT_PARAMS_FILE})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one param (repeatable); the value is parsed as YAML",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    _add_params(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--report-dir", default="reports", help="where the JSON report goes (default: reports/)")


def _print_summary(report: StageReport) -> None:
    gate = "passed" if report.gate.passed else "FAILED"
    print(f"[{report.stage}] {report.manifest_rows} manifest rows in {report.seconds:.1f}s -> {report.location}")
    for key, value in report.summary.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
            if len(value) > 160:
                value = value[:157] + "..."
        print(f"  {key}: {value}")
    for key, value in report.metrics.items():
        print(f"  metric {key}: {value:.4g}")
    print(f"  gate: {gate} ({len(report.gate.checks)} expectations)")
    if not report.gate.passed:
        for line in report.gate.reason().splitlines():
            print(f"    - {line}")


def _run(names: list[str], params: Params, args: argparse.Namespace) -> int:
    for name in names:
        try:
            report = run_stage(name, params, show_progress=not args.no_progress, report_dir=Path(args.report_dir))
        except GateFailed as err:
            print(f"[{name}] not run: {err}", file=sys.stderr)
            return EXIT_GATE_FAILED
        _print_summary(report)
        if not report.gate.passed:
            print(f"[{name}] quality gate failed; downstream stages must not run", file=sys.stderr)
            return EXIT_GATE_FAILED
    return 0


# teacher_models: for arms that run the teachers online.
EXPERIMENT_INPUTS = ("reinforced_dataset", "embedded_corpus", "teacher_models")


def _experiment(params: Params, args: argparse.Namespace) -> int:
    """Run params.experiment's arms; first the stages it reads, where the lake lacks them."""
    from clipforge.lake import open_lake
    from training.experiments.outputs import COMMAND, VALIDATION_ROOT, ExperimentFiles
    from training.experiments.run import run_experiment

    lake = open_lake(params.lake)
    names = [s.name for s in CHAIN]
    needed = names[: max(names.index(n) for n in EXPERIMENT_INPUTS) + 1]
    missing = [n for n in needed if lake.published_version(n) is None]
    if missing and (code := _run(missing, params, args)):
        return code
    try:
        inputs = resolve_inputs("experiment", EXPERIMENT_INPUTS, lake)
    except GateFailed as err:
        print(f"[experiment] not run: {err}", file=sys.stderr)
        return EXIT_GATE_FAILED
    progress = no_progress if args.no_progress else bar_progress("experiment", True)
    root = Path.cwd() if params.experiment.split == "test" else Path.cwd() / VALIDATION_ROOT
    command = COMMAND if args.params == DEFAULT_PARAMS_FILE else f"{COMMAND} --params {args.params}"
    result = run_experiment(
        params,
        inputs["reinforced_dataset"],
        inputs["embedded_corpus"],
        root,
        teacher_models=inputs["teacher_models"],
        command=command,
        progress=progress,
    )
    for arm, figures in result["arms"].items():
        zs, ret = figures["zeroshot_top1_mean"], figures["retrieval_mean_r1"]
        print(
            f"{arm:24s} zero-shot {zs['mean']:.3f} ± {zs['std']:.3f}  retrieval {ret['mean']:.3f} ± {ret['std']:.3f}"
            f"  {figures['seconds_per_step']:.3f} s/step"
        )
    files = ExperimentFiles(params.experiment.name)
    print(f"wrote {root / files.result} and {root / files.report} in {result['wall_seconds'] / 60:.1f} min")
    return 0


def _models() -> int:
    """Every registered student with its towers' parameter counts (built weightless, on meta)."""
    import torch

    from training.models.students import STUDENT_REGISTRY, build_student, tower_params

    print(f"{'variant':18s} {'image (M)':>10s} {'text (M)':>10s} {'res':>4s} {'embed':>5s}  paper (M)")
    for name in sorted(STUDENT_REGISTRY):
        # The large variants are built weightless; open_clip's own models need real tensors.
        with torch.device("meta" if name.startswith("MobileCLIP") else "cpu"):
            student = build_student(name)
        image, text = (count / 1e6 for count in tower_params(student.clip))
        paper = getattr(getattr(student.clip, "config", None), "paper_params_m", None)
        info = student.info
        paper_text = f"{paper[0]} + {paper[1]}" if paper else "-"
        print(f"{name:18s} {image:10.2f} {text:10.2f} {info.image_size:4d} {info.embed_dim:5d}  {paper_text}")
    return 0


def _announce(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A Progress (clipforge.progress) that prints a line as each item starts."""
    for item in items:
        print(f"{desc} {item}", flush=True)
        yield item


def _benchmark_latency(args: argparse.Namespace, params: Params) -> int:
    """Time every chosen variant against the baseline; print the table, write the JSON."""
    from export import latency_benchmark as latency

    # Options left out take export.latency_benchmark's defaults (imported here: the CLI starts without torch).
    chosen = {k: getattr(args, k) for k in ("warmup", "repeats", "threads") if getattr(args, k) is not None}
    variants = args.variants or list(latency.DEFAULT_VARIANTS)
    try:
        settings = latency.LatencySettings(opset=params.coreml_package.onnx_opset, **chosen)
        latency.resolve_variants(variants)
    except (KeyError, ValueError) as err:
        print(f"benchmark latency: {err.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    result = latency.run_benchmark(
        variants,
        baseline=args.baseline or latency.DEFAULT_BASELINE,
        settings=settings,
        progress=_announce,
    )
    path = Path(args.json) if args.json else latency.DEFAULT_JSON
    latency.write_json(result, path)
    print(latency.render_table(result))
    print(f"threads {settings.threads}, warmup {settings.warmup}, repeats {settings.repeats}; {result['machine']}")
    print(f"wrote {path}")
    if args.markdown:
        print("\n" + latency.render_markdown(result))
    return 0


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    benchmark = sub.add_parser("benchmark", help="measurements outside the chain")
    kinds = benchmark.add_subparsers(dest="benchmark", required=True)
    latency = kinds.add_parser("latency", help="batch-1 CPU latency of student variants vs a ViT-B/16 CLIP")
    latency.add_argument("--variants", nargs="+", metavar="NAME", help="student names or aliases (default: nano S0-B)")
    latency.add_argument("--baseline", help="open_clip model name, random weights (default: ViT-B-16)")
    latency.add_argument("--repeats", type=int, help="timed runs per measurement (default: 20)")
    latency.add_argument("--warmup", type=int, help="untimed runs before them (default: 5)")
    latency.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: all usable cores)")
    latency.add_argument("--json", help="where every figure goes (default: reports/latency.json)")
    latency.add_argument("--markdown", action="store_true", help="also print the README table")
    _add_params(latency)  # coreml_package.onnx_opset: the files are exported as the stage exports them


def _summary(params: Params) -> int:
    """Per stage: rows, seconds, gate; then the evaluation metrics and exported files."""
    from clipforge.lake import StageNotPublished, open_lake

    lake = open_lake(params.lake)
    missing = 0
    for spec in CHAIN:
        try:
            report = read_report(lake.stage_dir(spec.name))
        except (StageNotPublished, FileNotFoundError):
            print(f"{spec.name:24s} not run")
            missing += 1
            continue
        gate = "gate passed" if report["gate"]["passed"] else "GATE FAILED"
        print(f"{spec.name:24s} {report['manifest_rows']:6d} rows {report['seconds']:7.1f} s  {gate}")
        if spec.name == "coreml_package":
            for name in sorted(
                p.name for p in lake.stage_dir(spec.name).iterdir() if p.suffix in (".mlpackage", ".onnx")
            ):
                print(f"{'':24s} {lake.describe(spec.name)}/{name}")
        if spec.name == "evaluation":
            for key, value in sorted(report["metrics"].items()):
                print(f"{'':24s} {key} = {value:.4f}")
            registry = report["summary"].get("registry")
            if registry is not None:
                print(f"{'':24s} registry: {json.dumps(registry, default=str)}")
    return 1 if missing else 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="fold, export to Core ML + ONNX, verify and report one student")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--student", type=Path, metavar="FOLDER", help="a student folder (student.json), folded or not")
    source.add_argument("--variant", metavar="NAME", help="a freshly initialised (random) model of this variant")
    parser.add_argument("--out", type=Path, help="output folder (default: exports/<variant>)")
    parser.add_argument("--precision", choices=get_args(Precision), help="Core ML precision (default: params)")
    parser.add_argument("--formats", default="coreml,onnx", help="comma-separated: coreml, onnx (default: both)")
    _add_params(parser)  # coreml_package and reparameterized_model: the stage's settings and bars


def _export(args: argparse.Namespace, params: Params) -> int:
    from export.command import export_student, format_report

    package = params.coreml_package
    if args.precision is not None:
        package = package.model_copy(update={"precision": args.precision})
    try:
        report = export_student(
            args.out,
            folder=args.student,
            variant=args.variant,
            package=package,
            fold=params.reparameterized_model,
            formats=[name.strip() for name in args.formats.split(",") if name.strip()],
        )
    except (KeyError, ValueError, FileNotFoundError) as err:  # a bad variant, folder or format
        # str(KeyError) quotes its message; the message itself is what the user needs.
        print(f"clipforge export: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return EXIT_USAGE
    print(format_report(report))
    return 0 if report["passed"] else EXIT_GATE_FAILED


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="clipforge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for spec in CHAIN:
        _add_common(sub.add_parser(spec.name, help=spec.description))
    chain = sub.add_parser("chain", help="run every stage in order")
    _add_common(chain)
    chain.add_argument("--from", dest="first", choices=list(STAGES), default=CHAIN[0].name)
    chain.add_argument("--to", dest="last", choices=list(STAGES), default=CHAIN[-1].name)
    experiment = sub.add_parser("experiment", help="train params.experiment's arms over seeds and compare them")
    _add_common(experiment)
    sub.add_parser("stages", help="list the stages of the chain")
    sub.add_parser("models", help="list the student variants with image and text parameter counts")
    _add_benchmark(sub)
    _add_export(sub)
    _add_params(sub.add_parser("summary", help="what the last run of each stage left in the lake"))

    args = parser.parse_args(argv)
    if args.command == "stages":
        for spec in CHAIN:
            print(f"{spec.name:24s} <- {', '.join(spec.inputs) or '-':50s} {spec.description}")
        return 0
    if args.command == "models":
        return _models()
    try:
        # Validated once, here, before any stage work or MLflow run.
        params = load_params(args.params, args.overrides)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    if args.command == "benchmark":
        return _benchmark_latency(args, params)
    if args.command == "export":
        return _export(args, params)
    if args.command == "summary":
        return _summary(params)
    if args.command == "experiment":
        return _experiment(params, args)
    if args.command == "chain":
        names = [s.name for s in CHAIN]
        return _run(names[names.index(args.first) : names.index(args.last) + 1], params, args)
    return _run([args.command], params, args)


if __name__ == "__main__":
    sys.exit(main())
