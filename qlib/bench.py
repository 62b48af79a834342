"""Measurement: latency, throughput, size on disk, parameters, MACs and peak memory.

Introduced in notebook 00, used by every later notebook and by the report. Each number
answers one question about a (compressed) model:

    latency      how long one call takes: warm-up, then ``repeats`` timed calls with
                 ``time.perf_counter``; report median, p90 and min (means hide outliers)
    throughput   images per second = batch / median seconds
    size         bytes of the serialized file that would really be shipped
    params       sum of numel over parameters; nonzeros: those not exactly 0
    MACs         multiply-accumulates of Conv / Linear layers for one forward pass
    peak memory  the most bytes alive at once during one forward pass

``python -m qlib.bench deploy ...`` hands over to ``qlib.deploy.main`` (notebook 03).
"""

from __future__ import annotations

import gc
import io
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["measure_latency", "throughput", "model_size_bytes", "count_parameters",
           "count_nonzeros", "count_macs", "peak_memory", "format_table"]

Inputs = Tensor | np.ndarray | tuple | list


def _as_args(example_input: Inputs) -> tuple:
    """A tensor / array becomes a 1-tuple; a tuple or list is passed as positional args."""
    if isinstance(example_input, (Tensor, np.ndarray)):
        return (example_input,)
    if isinstance(example_input, (tuple, list)) and len(example_input) > 0:
        return tuple(example_input)
    raise TypeError("example_input must be a tensor, an array or a non-empty tuple/list of "
                    f"inputs, got {type(example_input).__name__}")


def _check_int(value: Any, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_module(model: Any, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} needs an nn.Module, got {type(model).__name__}")
    return model


@contextmanager
def _inference(model: Any, threads: int | None = None) -> Iterator[None]:
    """Eval mode + no_grad (+ pinned thread count); everything restored, also on error."""
    prev_threads = torch.get_num_threads()
    was_training = isinstance(model, nn.Module) and model.training
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if isinstance(model, nn.Module):
            model.eval()  # dropout off, batch norm uses its running statistics
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(prev_threads)
        if was_training:
            model.train()


def measure_latency(fn_or_model: nn.Module | Callable[..., Any], example_input: Inputs, *,
                    warmup: int = 10, repeats: int = 50, threads: int | None = None) -> dict:
    """Time ``fn_or_model(*inputs)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Introduced in notebook 00. Each run is ``(perf_counter() after - before) * 1000`` ms;
    returns ``{"median_ms", "p90_ms", "min_ms", "runs"}`` (``runs``: list of ``repeats``
    floats; p90 by linear interpolation, as ``np.percentile``). Calls run under
    ``torch.no_grad`` with a module in eval mode (its mode is restored afterwards) and the
    garbage collector paused. ``threads`` pins ``torch.set_num_threads`` for the
    measurement and the previous count is always restored; it does not change the
    threads of another runtime (give an ONNX Runtime session its own ``intra_op_num_threads``).
    ``example_input``: a tensor/array, or a tuple/list passed as positional arguments.
    Why not one bare ``time.time()`` loop: the first calls pay one-off costs (allocation,
    kernel selection) and single runs are noisy, so warm up and report robust statistics.

    >>> measure_latency(lambda x: x + 1, torch.zeros(3), warmup=0, repeats=3)["runs"].__len__()
    3
    """
    if not callable(fn_or_model):
        raise TypeError(f"fn_or_model must be an nn.Module or a callable, got "
                        f"{type(fn_or_model).__name__}")
    _check_int(warmup, "warmup", 0)
    _check_int(repeats, "repeats", 1)
    if threads is not None:
        _check_int(threads, "threads", 1)
    args = _as_args(example_input)
    cuda = any(isinstance(a, Tensor) and a.is_cuda for a in args)
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # GPU calls are asynchronous
    runs: list[float] = []
    gc_was_enabled = gc.isenabled()
    with _inference(fn_or_model, threads):
        try:
            gc.disable()  # a collection in the middle of a run is noise, not model time
            for _ in range(warmup):
                fn_or_model(*args)
            sync()
            for _ in range(repeats):
                start = time.perf_counter()
                fn_or_model(*args)
                sync()
                runs.append((time.perf_counter() - start) * 1000.0)
        finally:
            if gc_was_enabled:
                gc.enable()
    a = np.asarray(runs)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "min_ms": float(a.min()), "runs": runs}


def throughput(fn_or_model: nn.Module | Callable[..., Any], example_input: Inputs,
               **kwargs: Any) -> float:
    """Images per second: ``batch / (median_ms / 1000)``, batch = first dim of the first input.

    Introduced in notebook 07. Keyword arguments are those of :func:`measure_latency`.
    Larger batches usually raise throughput while each call takes longer (latency).

    >>> throughput(torch.nn.Identity(), torch.zeros(8, 3), repeats=3) > 0
    True
    """
    first = _as_args(example_input)[0]
    if getattr(first, "ndim", 0) < 1 or first.shape[0] < 1:
        raise ValueError("throughput needs a batched first input (dim 0 = batch size >= 1), "
                         f"got shape {tuple(getattr(first, 'shape', ()))}")
    median_ms = measure_latency(fn_or_model, example_input, **kwargs)["median_ms"]
    return first.shape[0] / max(median_ms / 1000.0, 1e-12)


def model_size_bytes(model_or_path: nn.Module | str | Path) -> int:
    """Bytes of the serialized model: ``len(torch.save(model.state_dict()))`` or a file's size.

    Introduced in notebook 00. An ``nn.Module`` is serialized in memory (``io.BytesIO``):
    fp32 costs 4 bytes per parameter and buffer entry, plus a small zip header. The zip
    names its entries after the file's stem ("archive" in memory), so this equals
    ``torch.save(model.state_dict(), "archive.pt")`` exactly; another file name shifts the
    header by a few hundred bytes (e.g. -364 bytes for "model.pt"). A ``str``/``Path``
    names a file (its size on disk) or a directory (sum over the files inside, recursively),
    e.g. an exported ``.onnx`` model or a packed int8 weight file.

    >>> model_size_bytes(torch.nn.Linear(1000, 1000)) > 4 * 1000 * 1000
    True
    """
    if isinstance(model_or_path, nn.Module):
        buffer = io.BytesIO()
        torch.save(model_or_path.state_dict(), buffer)
        return buffer.getbuffer().nbytes
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        raise ValueError(f"model_size_bytes: no file or directory at {str(path)!r}")
    raise TypeError("model_size_bytes takes an nn.Module or a file/directory path (str or "
                    f"Path), got {type(model_or_path).__name__}")


def _effective_params(model: nn.Module) -> list[Tensor]:
    """The weights the model computes with: ``w_orig * w_mask`` for torch.nn.utils.prune."""
    out = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            mask = getattr(module, name[:-5] + "_mask", None) if name.endswith("_orig") else None
            out.append(p.detach() * mask if isinstance(mask, Tensor) else p.detach())
    return out


def count_parameters(model: nn.Module) -> int:
    """Number of parameter entries: sum of ``p.numel()`` over ``model.parameters()``.

    Introduced in notebook 00. Buffers (batch-norm running statistics, masks) are not
    counted; a parameter shared by two layers counts once.

    >>> count_parameters(torch.nn.Linear(3, 2))  # 3*2 weights + 2 biases
    8
    """
    _check_module(model, "count_parameters")
    return int(sum(p.numel() for p in model.parameters()))


def count_nonzeros(model: nn.Module) -> int:
    """Number of parameter entries that are not exactly zero (parameters only, no buffers).

    Introduced in notebook 05 (pruning): sparsity = 1 - nonzeros / params. A weight pruned
    with ``torch.nn.utils.prune`` is counted as it is used, ``weight_orig * weight_mask``.

    >>> lin = torch.nn.Linear(3, 2); _ = torch.nn.init.zeros_(lin.weight); count_nonzeros(lin)
    2
    """
    _check_module(model, "count_nonzeros")
    return int(sum(torch.count_nonzero(p).item() for p in _effective_params(model)))


def count_macs(model: nn.Module, example_input: Inputs) -> int:
    """Multiply-accumulates of the Conv (1d/2d/3d) and Linear layers in one forward pass.

    Introduced in notebook 00. Counted with forward hooks on the output shapes, for the
    whole ``example_input`` batch (pass batch 1 for MACs per image):

        Conv:   out.numel() * (C_in / groups) * prod(kernel_size)  # out: (N, C_out, H', W')
        Linear: out.numel() * in_features                          # out: (..., out_features)

    Bias additions, batch norm, activations and pooling are not MACs and are left out;
    a layer called twice counts twice. FLOPs of these layers are about 2 * MACs.

    >>> count_macs(torch.nn.Linear(4, 3), torch.zeros(2, 4))  # 2 * 3 outputs * 4 inputs
    24
    """
    _check_module(model, "count_macs")
    args = _as_args(example_input)
    total = [0]

    def conv_hook(m: nn.modules.conv._ConvNd, _inp: Any, out: Tensor) -> None:
        total[0] += out.numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))

    def linear_hook(m: nn.Linear, _inp: Any, out: Tensor) -> None:
        total[0] += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    if not handles:
        raise ValueError("count_macs counts Conv1d/2d/3d and Linear layers; the model "
                         f"{type(model).__name__} has none")
    try:
        with _inference(model):
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return int(total[0])


def peak_memory(model: nn.Module | Callable[..., Any], example_input: Inputs) -> dict:
    """Peak memory of one inference forward pass, in bytes, measured at the allocator.

    Introduced in notebook 07. Returns ``{"weights_bytes", "input_bytes",
    "activations_peak_bytes", "peak_bytes"}`` with ``peak_bytes`` the sum of the other three:

        weights_bytes           bytes of parameters + buffers (nbytes; 0 for a plain callable)
        activations_peak_bytes  max over time of (bytes allocated - bytes freed) during the
                                forward, from the PyTorch profiler's CPU memory events
                                (``profile_memory=True``): outputs, intermediates and
                                temporary workspaces, each counted while it is alive

    Why this measure: the process RSS high-water mark is process-wide, monotonic and
    includes the Python interpreter and every earlier experiment, so it cannot tell two
    models apart; summing every layer's output overstates (most die at once) and ignores
    kernel workspaces. Allocator events count exactly what this forward allocates (only
    PyTorch's allocator: memory inside another runtime such as ONNX Runtime is not seen).
    Run under ``no_grad`` in eval mode: with autograd on, activations would be kept for
    backward. Example: MLP 100 -> 50 -> ReLU -> 10, batch 4 keeps the hidden layer and its
    ReLU copy alive at once: 2 * 4*50*4 = 1600 bytes (800 + 160 with ``ReLU(inplace=True)``).
    """
    if not callable(model):
        raise TypeError(f"peak_memory needs an nn.Module or a callable, got {type(model).__name__}")
    args = _as_args(example_input)
    from torch.profiler import ProfilerActivity, profile

    with _inference(model):
        model(*args)  # warm-up: one-off allocations (caches, packed weights) are not the peak
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(*args)
    events = prof.profiler.kineto_results.events()  # the data export_memory_timeline uses
    deltas = [(e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"]
    deltas.sort(key=lambda d: d[0])  # stable: simultaneous events keep their order
    live = peak = 0
    for _, nbytes in deltas:  # + allocation, - free
        live += nbytes
        peak = max(peak, live)
    weights: dict[int, int] = {}  # by storage pointer: tied weights count once
    if isinstance(model, nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            weights[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    # the input's own bytes (a slice x[:1] of a big tensor shares its storage: count the slice)
    in_bytes = sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size()
                   for a in args if isinstance(a, (Tensor, np.ndarray)))
    w = sum(weights.values())
    return {"weights_bytes": int(w), "input_bytes": int(in_bytes),
            "activations_peak_bytes": int(peak), "peak_bytes": int(w + in_bytes + peak)}


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of dicts (one row each), numbers right-aligned, floats to 4 digits.

    Introduced in notebook 07. ``columns`` picks and orders keys (default: the first
    row's keys); a missing value prints as an empty cell.

    >>> print(format_table([{"name": "fp32", "ms": 1.23456}]))
    | name |    ms |
    | ---- | ----: |
    | fp32 | 1.235 |
    """
    if not rows:
        raise ValueError("format_table needs at least one row (a dict)")
    cols = list(columns if columns is not None else rows[0].keys())

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in cols] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in cols]
    widths = [max(3, len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(s.rjust(w) if num else s.ljust(w)
                                 for s, w, num in zip(cells, widths, numeric)) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if num else "-" * w
                             for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(cols), rule] + [line(b) for b in body])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qlib.bench deploy ...``: hand the remaining arguments to qlib.deploy."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["deploy"]:
        from . import deploy  # written in notebook 03's issue

        return int(deploy.main(argv[1:]) or 0)
    print("usage: python -m qlib.bench deploy [ARGS ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
