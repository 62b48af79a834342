"""The one command line: ``python -m qlib report | list | deploy | workbook | prepare``.

    report    evaluate the baseline and every recipe into DIR (report.json, report.md, PNGs)
    list      name every recipe, its technique and what it does
    deploy    the deploy benchmark: fp32 and int8 runtimes side by side (notebook 03)
    workbook  write (or --check) the student copies of the notebooks, or with
              --nbgrader DIR the same exercises as an nbgrader course
    prepare   train and cache, one after the other, the models that several notebooks
              load: the course CNN, the report's trained recipes, the course LM and its
              six students (``make test`` runs it first; a workshop lead runs it on each
              machine before the session)

Output locations (``--out``, ``--json``, the cache folder under ``data/``) are checked
before any work starts, and before the heavy modules (ONNX, nbformat) are imported, so a
bad path fails in a second or two with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import data as qdata
from ._files import writable_dir_problem
from ._table import markdown_table
from .data import DATASETS, CorruptDataError, DownloadError
from .models import MODELS

# The commands' heavy modules (ONNX and ONNX Runtime through the recipes, nbformat through
# the workbook) are imported inside the functions below, after the output checks. Their
# names for the choices are repeated here; tests/test_deploy.py checks they agree.
TASKS = ("vision", "lm")                  # qlib.report.TASKS
BENCH_MODELS = ("course", "resnet18")     # qlib.deploy.BENCH_MODELS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qlib", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="evaluate the baseline and the recipes into DIR")
    rep.add_argument("--out", required=True, help="output folder (created if missing)")
    rep.add_argument("--task", default="vision", choices=TASKS,
                     help="vision: the CNN baseline and its recipes (default); lm: the course "
                          "language model and its recipes (notebook 09)")
    rep.add_argument("--only", nargs="+", metavar="NAME", help="run only these recipes")
    rep.add_argument("--dataset", default="embedded", choices=DATASETS,
                     help="data for the baseline and recipes (default: the offline MNIST "
                          "sample; embedded-corrupt: the same sample corrupted MNIST-C style, "
                          "offline and harder; the others download through torchvision when "
                          "online)")
    rep.add_argument("--model", default="course", choices=sorted(MODELS),
                     help="the baseline architecture (default: course)")
    rep.add_argument("--challenge", nargs="+", metavar="FILE", default=[],
                     help="score your own qlib.pipeline.save_compressed files of the course "
                          "model in the compression challenge (notebook 08)")
    rep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub.add_parser("list", help="list the registered recipes")
    dep = sub.add_parser("deploy", help="the deploy benchmark (fp32 vs int8 runtimes)")
    dep.add_argument("--suite", choices=("cnn", "lm"), default="cnn",
                     help="cnn: the course CNN and ResNet-18, fp32 vs int8 (notebook 03); lm: "
                          "LLM-sized layers, fp32 vs MatMulNBits int4/int8 (notebook 09)")
    dep.add_argument("--json", type=Path, help="write the rows here (a JSON list)")
    dep.add_argument("--models", nargs="+", default=list(BENCH_MODELS), choices=BENCH_MODELS)
    dep.add_argument("--threads", type=int, default=1, help="threads per runtime (default 1)")
    dep.add_argument("--image-size", type=int, default=224, help="ResNet input side (224)")
    dep.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    dep.add_argument("--scale", type=float, default=1.0, help="multiply the timing budget")
    dep.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    dep.add_argument("--compile-timeout", type=float, default=120.0,
                     help="seconds allowed for the torch.compile warm-up (default 120)")
    dep.add_argument("--no-progress", action="store_true")
    wb = sub.add_parser("workbook", help="write the student copies notebooks/workbook/")
    wb.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a student copy is missing or stale")
    wb.add_argument("--src", default=None,
                    help="instructor notebooks folder (default: the course's notebooks/)")
    wb.add_argument("--out", default=None, help="student copies (default SRC/workbook)")
    wb.add_argument("--nbgrader", metavar="DIR", default=None,
                    help="write the nbgrader course into DIR instead (nbgrader_config.py, "
                         "source/NN_*/; see the README's \"Teaching with nbgrader\")")
    wb.add_argument("--grade-written", action="store_true",
                    help="with --nbgrader: the written answers are graded by hand")
    prep = sub.add_parser("prepare", help="train and cache the models several notebooks share "
                                          "(about 5 min on 2 cores the first time)")
    prep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _check_outputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fail in one line, before any work, when an output location cannot be written."""

    def fail(message: str) -> None:  # one line (no usage): the arguments parsed, a path is bad
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)

    out = getattr(args, "out", None)
    if args.command == "report" and (why := writable_dir_problem(Path(out))):
        fail(f"--out: {why}")
    path = getattr(args, "json", None)
    if path is not None:
        if path.is_dir():
            fail(f"--json: {path} is a folder; give a file name such as {path}/rows.json")
        if why := writable_dir_problem(path.parent):
            fail(f"--json: {why}")
    if args.command == "workbook":
        if args.grade_written and not args.nbgrader:
            parser.error("--grade-written goes with --nbgrader DIR")
        if args.nbgrader and (args.check or args.out):
            parser.error("--nbgrader writes a course: it takes neither --check nor --out")
        if args.nbgrader and (why := writable_dir_problem(Path(args.nbgrader))):
            fail(f"--nbgrader: {why}")
    # report and deploy may train (the baseline, the LM, QAT recipes) and export ONNX files
    # into the data folder: a model trained for minutes and then not saved is lost work.
    if args.command in ("report", "deploy", "prepare") and (
            why := writable_dir_problem(qdata.DATA_DIR)):
        fail(f"the data folder (cached models, ONNX files): {why}; set QLIB_DATA to a "
             "writable folder")


def _report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # heavy (ONNX Runtime through the recipes): imported after the output checks
    from .report import build_lm_report, build_report, lm_table, report_table, write_report
    if args.task == "lm" and args.challenge:
        parser.error("--challenge scores vision models (the course CNN); drop it with --task lm")
    try:
        if args.task == "lm":
            report = build_lm_report(args.only, progress=not args.no_progress)
        else:
            report = build_report(args.only, dataset=args.dataset, model=args.model,
                                  progress=not args.no_progress, challenge=args.challenge)
    except DownloadError as err:  # the option the user typed, not the Python call
        parser.error(err.with_hint("--dataset embedded (the default)"))
    except (ValueError, CorruptDataError) as err:
        parser.error(str(err))
    paths = write_report(report, args.out)
    table = lm_table if args.task == "lm" else report_table
    print(table(report["variants"], report["baseline"]))
    print("wrote " + ", ".join(str(p) for p in paths))
    for f in report["failed"]:
        print(f"FAILED {f['name']}: {f['error']}", file=sys.stderr)
    return 1 if report["failed"] else 0


def _deploy_lm(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # heavy (ONNX Runtime): imported after the output checks
    from .deploy import write_rows
    from .deploy_lm import LM_COLUMNS, generation_rows, lm_suite, lm_summary
    from .lm import get_lm
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    rows = lm_suite(threads=args.threads, progress=not args.no_progress)
    lm, _ = get_lm(progress=not args.no_progress)   # cached; trained first (~2 min) if absent
    rows += generation_rows(lm, threads=args.threads)
    print(markdown_table(rows, LM_COLUMNS))
    for line in lm_summary(rows):
        print(line)
    if args.json:
        print(f"wrote {write_rows(rows, args.json)}")
    return 0


def _deploy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.suite == "lm":
        return _deploy_lm(args, parser)
    # heavy (ONNX Runtime, torch.compile): imported after the output checks
    from .deploy import COLUMNS, benchmark, summary, write_rows
    phases: dict[str, float] = {}
    try:
        rows = benchmark(args.models, threads=args.threads, image_size=args.image_size,
                         rounds=args.rounds, scale=args.scale, compile=not args.no_compile,
                         compile_timeout=args.compile_timeout, progress=not args.no_progress,
                         phases=phases)
    except ValueError as err:
        parser.error(str(err))
    print(markdown_table(rows, COLUMNS))
    print(f"threads per runtime: {args.threads}; seconds: " + ", ".join(
        f"{k} {v:.0f}" for k, v in phases.items()) + f", total {sum(phases.values()):.0f}")
    for line in summary(rows):
        print(line)
    if args.json:
        print(f"wrote {write_rows(rows, args.json)}")
    return 0


def _workbook(args: argparse.Namespace) -> int:
    # heavy (nbformat validates with jsonschema, seconds to import): only this command needs it
    from .course.workbook import NOTEBOOKS, generate
    if args.nbgrader:
        from .course.classroom import write_course  # nbformat too, as above
        try:
            course = write_course(args.nbgrader, args.src or NOTEBOOKS,
                                  grade_written=args.grade_written)
        except ValueError as err:
            print(f"workbook: {err}", file=sys.stderr)
            return 1
        for name, points in course.items():
            print(f"{points:3d} points  {Path(args.nbgrader) / 'source' / name}")
        return 0
    try:
        states = generate(args.src or NOTEBOOKS, args.out, check=args.check)
    except ValueError as err:
        print(f"workbook: {err}", file=sys.stderr)
        return 1
    for name, state in states.items():
        print(f"{state:13s} {name}")
    bad = [n for n, s in states.items() if s in ("stale", "missing", "orphan")]
    if bad and args.check:
        print(f"workbook: {len(bad)} student copies out of date: run `make workbook`",
              file=sys.stderr)
    return 1 if bad and args.check else 0


#: The report's vision recipes that train a model and cache it; notebooks 04, 06, 07, 08 and
#: 11 and the report load them, so `prepare` trains them too (the others are computed in
#: seconds from the baseline each time).
TRAINED_RECIPES = ("qat-w4a4", "qat-w2a8", "scratch-student", "kd-student",
                   "deep-compression", "lowrank-fc1", "mobile-fp32")


#: Training steps of the speed probe that `prepare` runs first.
PROBE_STEPS = 150


def _speed_probe() -> float:
    """Seconds for :data:`PROBE_STEPS` steps of notebook 10's LM student (its shape, the
    course LM's batches, 2 threads), trained and thrown away: a fixed piece of the work that
    `prepare` and the notebooks do. One shared 2-core machine ran the same steps (timed with
    the first step's set-up, about 2.5 s more than this probe reads) in 5.0 s and in 13.0 s on
    the same day, and its test runs took from 17 to 28 min, so a time means little without
    it."""
    from .distill_lm import LM_STUDENT
    from .lm import LM_RECIPE, build_lm, train_lm
    from .text import load_text
    from .train import TRAIN_THREADS

    data = load_text()
    arch = {k: LM_STUDENT[k] for k in ("d_model", "n_layer", "n_head")}
    # one untimed step first: a process's first step also builds the first torch optimizer,
    # which imports dynamo (3 s here; 8.5 s where no bytecode was compiled)
    for steps in (1, PROBE_STEPS):
        model = build_lm(data.vocab_size, seed=0, block_size=LM_RECIPE["block_size"], **arch)
        t = time.perf_counter()
        train_lm(model, data, steps=steps, lr=LM_STUDENT["lr"],
                 batch_size=LM_RECIPE["batch_size"], progress=False, threads=TRAIN_THREADS)
    return time.perf_counter() - t


def _prepare(args: argparse.Namespace) -> int:
    """Load or train, one at a time, each model that several notebooks share; print the
    seconds each took. Training pins 2 threads (qlib.train.TRAIN_THREADS): two trainings at
    once on a 2-core machine stall each other, so this runs before anything in parallel."""
    from .distill_lm import get_lm_student
    from .evaluate import run_recipe
    from .lm import get_lm
    from .recipes.lm_compress import STUDENT_SEEDS
    from .train import get_baseline
    progress, start = not args.no_progress, time.perf_counter()
    print(f"{_speed_probe():6.1f} s  speed probe: {PROBE_STEPS} training steps of notebook 10's "
          f"LM student (compare runs by it)", flush=True)

    def timed(what: str, load: Callable[[], object]) -> object:
        t = time.perf_counter()
        out = load()
        print(f"{time.perf_counter() - t:6.1f} s  {what}", flush=True)
        return out

    baseline, images = timed("the course CNN (notebooks 00-08, 11)",
                             lambda: get_baseline(progress=progress))
    for name in TRAINED_RECIPES:   # the report's calls, so notebook 07 finds them cached
        timed(f"recipe {name}", lambda: run_recipe(name, baseline, images, evaluate=False))
    lm, data = timed("the course LM (notebooks 09, 10)", lambda: get_lm(progress=progress))
    for mode in ("scratch", "kd"):
        for seed in STUDENT_SEEDS:   # exactly notebook 10's calls, so it finds them cached
            timed(f"the {mode} LM student, seed {seed} (notebook 10)",
                  lambda: get_lm_student(mode, data, lm if mode == "kd" else None, seed=seed,
                                         progress=progress))
    print(f"{time.perf_counter() - start:6.1f} s  in all; cached in {qdata.DATA_DIR / 'models'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_outputs(args, parser)
    if args.command == "list":
        from .recipes import load_recipes  # heavy (ONNX): only this command needs it
        for r in load_recipes().values():
            print(f"{r.name:20s} {r.technique:14s} {r.description}")
        return 0
    if args.command == "report":
        return _report(args, parser)
    if args.command == "deploy":
        return _deploy(args, parser)
    if args.command == "prepare":
        return _prepare(args)
    return _workbook(args)


if __name__ == "__main__":
    sys.exit(main())
