"""Footprint: parameters, non-zeros, MACs and peak memory of a forward pass.

Introduced in notebook 00; re-exported by :mod:`qlib.bench`, where notebooks find them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["count_parameters", "count_nonzeros", "count_macs", "peak_memory"]

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
