"""The deploy benchmark: fp32 and int8 runtimes side by side, measured in one process.

Introduced in notebook 03. :func:`benchmark` returns the rows (a list of dicts);
``python -m qlib deploy --json FILE`` (alias: ``python -m qlib.bench deploy``) prints and
writes them. It measures the trained
course model and a ResNet-18 (random weights, 3x224x224) as

    eager    fp32  PyTorch eager
    compile  fp32  torch.compile (inductor); skipped with a note if it cannot compile in time
    ort      fp32  ONNX Runtime on the exported graph (BN folded)
    ort      int8  static QDQ, u8 activations / s8 per-channel weights  (the fast path)
    ort      int8  static QDQ, s8 activations / s8 weights              (slow on AVX2 / VNNI x86)
    ort      int8  dynamic (ranges per call, ConvInteger)               (slow for convs)
    torchao  int8  PT2E + X86 quantizer, static u8 act / s8 per-channel w, lowered to oneDNN
                   int8 ops (qlib.runtime.ao.X86Int8; one graph per batch size, no codegen)
    torchao  int8  quantize_(Int8DynamicActivationInt8WeightConfig): Linear layers only

at batch 1 and a larger batch, and reports median / p90 latency, the size of the file on
disk, and quality against fp32 eager: top-1 agreement on the test images (course model) or
SQNR = 10 log10(sum y^2 / sum (y - y')^2) dB of the logits (ResNet, random weights), and
``speedup`` = (fastest fp32 median) / (this median) for the same model and batch. ResNet
runs at the ImageNet size 224x224 (1.8 GMACs per image), where int8 kernels pay off; the
28x28 course model (1.7 MMACs) shows the opposite: per-call overheads dominate.

Noise control: every runtime of one model is timed in the same process, interleaved
(round-robin over runtimes, several rounds, order rotated each round, runs pooled), so a
burst of load from elsewhere hits all runtimes alike and ratios hold; threads are pinned
(1 by default: a 2-core machine shared with others; one thread per runtime compares the
kernels, not the thread pools). torch.compile is first warmed up in a child process with a
deadline, so that a cold inductor cache can never blow the time budget.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._files import atomic_write
from ._util import set_seed
from . import data as qdata
from .data import calibration_batches
from .measure import interleaved_latency, model_size_bytes
from .models import resnet18
from .quant import sqnr_db
from .runtime.ao import X86Int8, int8_dynamic, pt2e_int8
from .runtime.onnx import OrtModel, export_onnx, quantize_dynamic_ort, quantize_static_ort
from .train import get_baseline

__all__ = ["benchmark", "summary", "write_rows", "warm_compile", "BENCH_MODELS", "COLUMNS",
           "TORCHAO_SCHEMES"]

#: Benchmarked models: the larger batch and the seconds of timing per batch size.
BENCH_MODELS = {"course": dict(batch=32, seconds=(6.0, 6.0)),
                "resnet18": dict(batch=8, seconds=(20.0, 30.0))}
#: The schemes of the torchao rows: PT2E static int8, quantize_ int8 dynamic.
TORCHAO_SCHEMES = ("PT2E static u8 act/s8 w", "dynamic s8 act/s8 w, Linear only")
COLUMNS = ("model", "runtime", "precision", "scheme", "batch", "median_ms", "p90_ms",
           "speedup", "size_bytes", "top1_agreement", "sqnr_db", "accuracy", "note")


def _load(name: str, image_size: int) -> tuple[nn.Module, list[Tensor], Tensor, Tensor | None]:
    """(model, calibration batches, quality images, their labels or None)."""
    if name == "course":  # the trained baseline; calibrate on training images, judge on test
        model, data = get_baseline(progress=False)
        return model, calibration_batches(data), *data.test.tensors
    set_seed(0)  # random weights, seeded: only speed and SQNR against fp32 matter
    model = resnet18().eval()
    gen = torch.Generator().manual_seed(1)
    cal = torch.randn(16, 3, image_size, image_size, generator=gen)
    return model, list(cal.split(4)), torch.randn(8, 3, image_size, image_size,
                                                  generator=gen), None


def _compile_all(models: dict[str, nn.Module], image_size: int) -> dict[str, tuple]:
    """torch.compile each model and run it at batch 1 and its larger batch: (fn, seconds)."""
    out = {}
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA" note
    for name, model in models.items():
        shape = (1, 28, 28) if name == "course" else (3, image_size, image_size)
        start = time.perf_counter()
        fn = torch.compile(model)
        with torch.no_grad():
            for b in (1, BENCH_MODELS[name]["batch"]):
                fn(torch.zeros(b, *shape))
        out[name] = (fn, time.perf_counter() - start)
    return out


def warm_compile(models: Sequence[str], image_size: int, threads: int) -> None:
    """Compile every model once, filling inductor's on-disk cache (run in a child process)."""
    torch.set_num_threads(threads)
    _compile_all({n: _load(n, image_size)[0] for n in models}, image_size)


@dataclass
class _Settings:
    models: list[str]
    threads: int
    image_size: int
    rounds: int
    scale: float
    compile_timeout: float
    torchao: bool = True


def _warmup_child(args: _Settings) -> subprocess.Popen:
    code = (f"from qlib.deploy import warm_compile; warm_compile({list(args.models)!r}, "
            f"{args.image_size}, {args.threads})")
    cmd = [sys.executable, "-c", code]
    # Own process group: on timeout the child and its inductor compile workers all go.
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _prepare(name: str, folder: Path, image_size: int, threads: int, torchao: bool = True
             ) -> dict:
    """Export and quantize one model; its runtimes as {key: (runtime, precision, scheme,
    callable, size_bytes)} plus the quality images."""
    model, cal, xq, yq = _load(name, image_size)
    fp32 = export_onnx(model, xq[:1], folder / f"{name}-fp32.onnx")
    files = {"ort-fp32": fp32,
             "ort-u8s8": quantize_static_ort(fp32, folder / f"{name}-u8s8.onnx", cal),
             "ort-s8s8": quantize_static_ort(fp32, folder / f"{name}-s8s8.onnx", cal,
                                             activation="int8"),
             "ort-dyn": quantize_dynamic_ort(fp32, folder / f"{name}-dynamic.onnx")}
    schemes = {"ort-fp32": ("fp32", None), "ort-u8s8": ("int8", "static u8 act/s8 w"),
               "ort-s8s8": ("int8", "static s8 act/s8 w"), "ort-dyn": ("int8", "dynamic")}
    runtimes = {"eager": ("eager", "fp32", None, model, model_size_bytes(model))}
    for key, path in files.items():
        runtimes[key] = ("ort", *schemes[key], OrtModel(path, threads=threads),
                         path.stat().st_size)
    if torchao:  # the same calibration batches as ORT's static int8
        ref = pt2e_int8(model, cal)
        runtimes["ao-pt2e"] = ("torchao", "int8", TORCHAO_SCHEMES[0],
                               X86Int8(ref, xq[:1], (1, BENCH_MODELS[name]["batch"])),
                               model_size_bytes(ref))
        dyn = int8_dynamic(model)
        runtimes["ao-dyn"] = ("torchao", "int8", TORCHAO_SCHEMES[1], dyn, model_size_bytes(dyn))
    return dict(model=model, runtimes=runtimes, xq=xq, yq=yq)


def _quality(prep: dict, fn: Callable, chunk: int) -> dict:
    """Top-1 agreement (+ accuracy) with fp32 eager on labelled images, else SQNR in dB."""
    with torch.no_grad():
        out = torch.cat([torch.as_tensor(fn(x)).float() for x in prep["xq"].split(chunk)])
        ref = prep.setdefault("ref", out)  # the first runtime asked is fp32 eager
    if prep["yq"] is None:
        db = sqnr_db(ref, out)  # +inf for the reference itself: JSON has no inf, say None
        return dict(sqnr_db=round(db, 2) if math.isfinite(db) else None)
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    acc = (out.argmax(1) == prep["yq"]).float().mean().item()
    return dict(top1_agreement=round(agree, 4), accuracy=round(acc, 4))


def _measure(name: str, prep: dict, compiled: tuple | None, note: str | None,
             args: _Settings, bar) -> list[dict]:
    rts = dict(prep["runtimes"])
    eager = rts.pop("eager")
    rts = {"eager": eager, **({"compile": ("compile", "fp32", None, compiled[0], eager[4])}
                              if compiled else {}), **rts}
    batch = BENCH_MODELS[name]["batch"]
    shape = tuple(prep["xq"].shape[1:])
    quality = {k: _quality(prep, rt[3], batch) for k, rt in rts.items()}
    rows = []
    for b, seconds in zip((1, batch), BENCH_MODELS[name]["seconds"]):
        x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(b))
        lat = interleaved_latency({k: rt[3] for k, rt in rts.items()}, x, rounds=args.rounds,
                                  seconds=seconds * args.scale, threads=args.threads,
                                  warmup=int(b != batch),  # the quality pass ran at `batch`
                                  progress=lambda: bar.update(1))
        best = min(lat[k]["median_ms"] for k, rt in rts.items() if rt[1] == "fp32")
        for k, (runtime, precision, scheme, _, size) in rts.items():
            row = dict(model=name, runtime=runtime, precision=precision, scheme=scheme,
                       batch=b, median_ms=round(lat[k]["median_ms"], 3),
                       p90_ms=round(lat[k]["p90_ms"], 3),
                       speedup=round(best / lat[k]["median_ms"], 2), size_bytes=size,
                       top1_agreement=None, sqnr_db=None, accuracy=None,
                       note=f"compiled in {compiled[1]:.0f} s" if k == "compile" else None)
            rows.append({**row, **quality[k]})
        if not compiled:  # keep the row, say why it has no numbers
            rows.insert(len(rows) - len(rts) + 1, dict(
                model=name, runtime="compile", precision="fp32", scheme=None, batch=b,
                median_ms=None, p90_ms=None, speedup=None,
                size_bytes=model_size_bytes(prep["model"]), top1_agreement=None,
                sqnr_db=None, accuracy=None, note=f"skipped: {note}"))
    return rows


def summary(rows: list[dict]) -> list[str]:
    """The 'done when' figures: batch-1 int8 static speed-up and file ratio per model."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        b1 = [r for r in rows if r["model"] == name and r["batch"] == 1 and r["median_ms"]]
        fp = min((r for r in b1 if r["precision"] == "fp32"), key=lambda r: r["median_ms"])
        q = next(r for r in b1 if r["scheme"] == "static u8 act/s8 w")
        ort32 = next(r for r in b1 if r["runtime"] == "ort" and r["precision"] == "fp32")
        ratio = fp["median_ms"] / q["median_ms"]
        line = (f"{name} batch 1: ORT int8 static {q['median_ms']:.2f} ms vs fastest fp32 "
                f"({fp['runtime']}) {fp['median_ms']:.2f} ms = {ratio:.2f}x faster; "
                f"file {ort32['size_bytes'] / q['size_bytes']:.2f}x smaller")
        if q["accuracy"] is not None:
            base = next(r for r in b1 if r["runtime"] == "eager")["accuracy"]
            line += f"; accuracy {100 * base:.2f}% -> {100 * q['accuracy']:.2f}%"
        lines.append(line)
    return lines


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Write the rows as a JSON list, atomically (no half-written file on a crash)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(rows, indent=1, allow_nan=False))
    return Path(path)


def _resolve_compile(child: subprocess.Popen | None, args: _Settings, start: float,
                     preps: dict, bar) -> tuple[dict, str]:
    """Wait for the compile warm-up until the deadline; then compile from the warm cache."""
    if child is None:
        return {}, "compile=False (--no-compile) given"
    bar.set_postfix_str("torch.compile warm-up")
    try:
        code = child.wait(timeout=max(args.compile_timeout - (time.perf_counter() - start),
                                      0.1))
    except subprocess.TimeoutExpired:
        return {}, f"torch.compile warm-up exceeded --compile-timeout {args.compile_timeout:.0f} s"
    if code != 0:
        return {}, f"torch.compile warm-up failed (exit {code})"
    try:
        return _compile_all({n: preps[n]["model"] for n in args.models}, args.image_size), ""
    except Exception as err:  # noqa: BLE001 - compile is optional: report and go on
        return {}, f"torch.compile failed: {type(err).__name__}: {str(err)[:100]}"


def _run(args: _Settings, child: subprocess.Popen | None, start: float, bar
         ) -> tuple[list[dict], dict[str, float]]:
    """Prepare every model, settle torch.compile, then measure model by model."""
    rows: list[dict] = []
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="qlib-deploy-") as folder:
        preps = {}
        for name in args.models:
            bar.set_postfix_str(f"export + quantize {name}")
            preps[name] = _prepare(name, Path(folder), args.image_size, args.threads,
                                   args.torchao)
            bar.update(1)
        phases["export+quantize"] = time.perf_counter() - start
        compiled, note = _resolve_compile(child, args, start, preps, bar)
        phases["compile"] = time.perf_counter() - start - phases["export+quantize"]
        per_model = 5 + 2 * args.torchao  # runtimes timed per batch size, compile aside
        bar.total = (len(args.models) * (1 + 2 * per_model * args.rounds)
                     + 2 * args.rounds * len(compiled))
        bar.refresh()
        for name in args.models:
            bar.set_postfix_str(f"measure {name}")
            rows += _measure(name, preps[name], compiled.get(name), note, args, bar)
    phases["measure"] = time.perf_counter() - start - sum(phases.values())
    return rows, phases


def benchmark(models: Sequence[str] = tuple(BENCH_MODELS), *, threads: int = 1,
              image_size: int = 224, rounds: int = 5, scale: float = 1.0,
              compile: bool = True, compile_timeout: float = 120.0, progress: bool = True,
              phases: dict[str, float] | None = None, torchao: bool = True) -> list[dict]:
    """Measure every runtime of each model; return the rows (:data:`COLUMNS` keys).

    ``threads`` per runtime, ``rounds`` of interleaved timing, ``scale`` multiplies the
    timing budget; ``compile=False`` skips torch.compile (its rows say why);
    ``torchao=False`` leaves out the two torchao rows. ``phases``, if
    given, receives the seconds spent exporting, compiling and measuring.
    """
    unknown = [m for m in models if m not in BENCH_MODELS]
    if unknown or not models:
        raise ValueError(f"models must be a non-empty subset of {list(BENCH_MODELS)}, got "
                         f"{list(models)}")
    if threads < 1 or rounds < 1 or not scale > 0 or image_size < 32:
        raise ValueError("need threads >= 1, rounds >= 1, scale > 0 and image_size >= 32; got "
                         f"{threads}, {rounds}, {scale}, {image_size}")
    args = _Settings(list(models), threads, image_size, rounds, scale, compile_timeout,
                     torchao)
    torch.set_num_threads(threads)
    # inductor's compiled kernels go under data/ with the course's other caches (`make
    # clean` removes them), not /tmp/torchinductor_<user>; a folder the user chose is kept.
    # Set before the warm-up child starts, which inherits it.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(qdata.DATA_DIR / "torch_compile"))
    start = time.perf_counter()
    child = _warmup_child(args) if compile else None
    bar = tqdm(total=len(models) * (1 + 2 * 6 * rounds), disable=not progress, desc="deploy")
    try:
        rows, spent = _run(args, child, start, bar)
    finally:  # never leave the warm-up child (and its compile workers) behind
        if child is not None and child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        bar.close()
    if phases is not None:
        phases.update(spent)
    return rows
