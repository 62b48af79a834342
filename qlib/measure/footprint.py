"""Footprint: size on disk, parameters, non-zeros, MACs and peak memory of a forward pass.

Introduced in notebook 00 (``qlib.bench`` re-exports these names, the course contract).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from .._util import Inputs, as_args, check_module, inference

__all__ = ["count_parameters", "count_nonzeros", "count_macs", "layer_macs", "peak_memory",
           "model_size_bytes"]


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
    check_module(model, "count_parameters")
    return int(sum(p.numel() for p in model.parameters()))


def count_nonzeros(model: nn.Module) -> int:
    """Number of parameter entries that are not exactly zero (parameters only, no buffers).

    Introduced in notebook 05 (pruning): sparsity = 1 - nonzeros / params. A weight pruned
    with ``torch.nn.utils.prune`` is counted as it is used, ``weight_orig * weight_mask``.

    >>> lin = torch.nn.Linear(3, 2); _ = torch.nn.init.zeros_(lin.weight); count_nonzeros(lin)
    2
    """
    check_module(model, "count_nonzeros")
    return int(sum(torch.count_nonzero(p).item() for p in _effective_params(model)))


def layer_macs(layer: nn.Module, out: Tensor) -> int:
    """The multiply-accumulates of one Conv (1d/2d/3d) or Linear call that produced ``out``
    (the formulas of :func:`count_macs`, for the whole batch in ``out``).

    >>> layer_macs(torch.nn.Linear(4, 3), torch.zeros(2, 3))
    24
    """
    if isinstance(layer, nn.modules.conv._ConvNd):
        return out.numel() * (layer.in_channels // layer.groups) * int(np.prod(layer.kernel_size))
    if isinstance(layer, nn.Linear):
        return out.numel() * layer.in_features
    raise TypeError(f"layer_macs counts Conv1d/2d/3d and Linear layers, got {type(layer).__name__}")


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
    check_module(model, "count_macs")
    args = as_args(example_input)
    total = [0]

    def hook(m: nn.Module, _inp: Any, out: Tensor) -> None:
        total[0] += layer_macs(m, out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    if not handles:
        raise ValueError("count_macs counts Conv1d/2d/3d and Linear layers; the model "
                         f"{type(model).__name__} has none")
    try:
        with inference(model):
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return int(total[0])


# Kineto, the C++ library behind torch.profiler, logs its own progress straight to file
# descriptor 2 ("USDT: ... profiler_start", "STAGE: ...", and on a CUDA build of torch on a
# machine with no GPU "ERROR: ... gpuGetDeviceCount failed with code 35"). None of it is an
# error for a CPU-only measurement, but a learner sees it as a red box in the notebook.
_PROFILER_CHATTER = re.compile(
    r"^(USDT|STAGE|INFO):\d{4}-\d\d-\d\d .*\.cpp:\d+\]"
    r"|^ERROR:\d{4}-\d\d-\d\d .*\] gpuGetDeviceCount failed")


@contextlib.contextmanager
def _quiet_profiler_log() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while the profiler runs, then write back
    to ``sys.stderr`` every line that is not the profiler's known progress chatter (so a
    real error still shows). Without a usable descriptor 2 it does nothing."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not _PROFILER_CHATTER.match(line)]
            if kept:
                sys.stderr.write("".join(kept))


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
    args = as_args(example_input)
    with inference(model):
        model(*args)  # warm-up: one-off allocations (caches, packed weights) are not the peak
        with _quiet_profiler_log():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                model(*args)
            events = prof.profiler.kineto_results.events()  # what export_memory_timeline uses
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
