"""Weight-only quantization of Linear layers: round to nearest, packed size, and one driver.

Introduced in notebook 09. A language model at batch 1 is memory bound: every decode step
reads every weight once, so storing W (out, in) in 4 bits instead of 32 makes it smaller
*and* faster, while the activations stay float. Round to nearest (RTN) is the baseline::

    per channel (axis 0):  one (scale, zero_point) per output row           (out,)
    per group g:           one per row and block of g inputs     (out, in // g)   g = 32/64/128
    codes = quantize(W, scale, zp, bits)      W_hat = scale * (codes - zp)    (min-max, asym.)

Smaller groups follow the weights more closely but store more qparams; :func:`packed_bytes`
counts both. :func:`quantize_linear_weights` applies any method of :data:`METHODS` (RTN,
GPTQ, AWQ, NF4, FP8 / MX) to a model's ``nn.Linear`` layers as fake quantization (float
weights that hold quantized values) and reports each layer's error and packed size.

>>> r = rtn_quantize(torch.tensor([[0.0, 1.0, -2.0, 0.5]]), 4, group_size=2)
>>> r.codes, r.weight
(tensor([[-8,  7, -8,  7]], dtype=torch.int32), tensor([[ 0.0000,  1.0000, -2.0000,  0.5000]]))
>>> r.scale, r.zero_point                      # one per row and group of 2: (1, 2)
(tensor([[0.0667, 0.1667]]), tensor([[-8,  4]]))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._util import run_batch
from .affine import choose_qparams, dequantize, minmax, quantize
from .awq import awq_quantize
from .fp8 import bits_per_value, fp8_fake_quantize, mx_fake_quantize
from .gptq import gptq_quantize
from .nf4 import nf4_fake_quantize, nf4_packed_bytes

__all__ = ["METHODS", "WeightQuant", "rtn_quantize", "packed_bytes", "calibration_inputs",
           "quantize_linear_weights"]

#: The methods of :func:`quantize_linear_weights`, with the keyword arguments each accepts.
METHODS: dict[str, tuple[str, ...]] = {
    "rtn": ("symmetric",), "gptq": ("symmetric", "percdamp", "block_size", "act_order"),
    "awq": ("symmetric", "n_grid", "clip"), "nf4": ("double_quant",),
    "fp8_e4m3": (), "fp8_e5m2": (), "mxfp8": (), "mxfp4": ()}
_FORMAT_BITS = {"nf4": 4, "fp8_e4m3": 8, "fp8_e5m2": 8, "mxfp8": 8, "mxfp4": 4}
_GROUP = {"nf4": 64, "mxfp8": 32, "mxfp4": 32}           # default block of the formats
_INTEGER = ("rtn", "gptq", "awq")


class WeightQuant(NamedTuple):
    """A weight quantized with RTN."""

    codes: Tensor        # (out, in) int32 in qrange(bits) (signed)
    scale: Tensor        # (out,) per channel or (out, in // group_size) per group, float32
    zero_point: Tensor   # int64, scale's shape (0 when symmetric)
    weight: Tensor       # (out, in) float32 = scale * (codes - zero_point)


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8 for weight-only integer quantization "
                         f"(8, 4 and 3 in the course), got {bits!r}")
    return bits


def _check_group(group_size: object, n_in: int, where: str = "") -> int | None:
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
            or n_in % group_size:
        raise ValueError(f"group_size={group_size!r} does not divide in_features={n_in}"
                         f"{where}; allowed: None (per channel) or a divisor such as 32, 64, "
                         f"128 of every quantized layer's in_features")
    return group_size


def rtn_quantize(w: Tensor, bits: int, *, group_size: int | None = None,
                 symmetric: bool = False) -> WeightQuant:
    """Round-to-nearest quantization of a (out, in) weight, per channel or per group.

    Min-max qparams from :func:`~qlib.quant.affine.minmax` (range widened to include 0),
    asymmetric by default; codes from :func:`~qlib.quant.affine.quantize`.
    """
    if not isinstance(w, Tensor) or w.ndim != 2:
        raise ValueError("w must be a 2-d (out, in) weight tensor")
    bits, group_size = _check_bits(bits), _check_group(group_size, w.shape[1])
    gran: dict[str, Any] = {"axis": 0} if group_size is None else {"group_size": group_size}
    w = w.detach().float()
    scale, zp = choose_qparams(*minmax(w, **gran), bits, symmetric=symmetric)
    codes = quantize(w, scale, zp, bits, **gran)
    return WeightQuant(codes, scale, zp, dequantize(codes, scale, zp, **gran))


def packed_bytes(out_features: int, in_features: int, bits: int, group_size: int | None = None,
                 *, scale_dtype: torch.dtype = torch.float16, symmetric: bool = False) -> int:
    """Bytes of a packed (out, in) integer weight: codes, scales and zero points.

    With n_groups = out * in / group_size (``out`` per channel)::

        ceil(out * in * bits / 8)                   the codes, ``bits`` bits each
      + n_groups * sizeof(scale_dtype)              one scale per group (fp16 by default)
      + ceil(n_groups * bits / 8)                   one zero point per group, ``bits`` bits
                                                    (none when symmetric)

    so int4 g128 costs 4 + 16/128 + 4/128 = 4.156 bits per weight (bias not counted).

    >>> packed_bytes(4096, 4096, 4, 128), packed_bytes(4096, 4096, 4, 128) * 8 / 4096**2
    (8716288, 4.15625)
    """
    bits = _check_bits(bits)
    group_size = _check_group(group_size, in_features)
    n_groups = out_features * (1 if group_size is None else in_features // group_size)
    size = torch.empty((), dtype=scale_dtype).element_size()
    zeros = 0 if symmetric else math.ceil(n_groups * bits / 8)
    return math.ceil(out_features * in_features * bits / 8) + n_groups * size + zeros


def _linears(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Linear]:
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not found:
        raise ValueError(f"model ({type(model).__name__}) has no nn.Linear layer to quantize; "
                         "weight-only methods apply to nn.Linear weights only")
    if layers is None:
        return found
    unknown = [n for n in layers if n not in found]
    if unknown or not layers:
        raise ValueError(f"layers must name nn.Linear layers of the model, got "
                         f"{unknown or list(layers)}; allowed: {list(found)}")
    return {n: found[n] for n in layers}


class _Stop(Exception):
    """Raised by a hook to end a forward once the one input wanted has been recorded."""


@torch.no_grad()
def _hooked_pass(model: nn.Module, hooks: dict[str, Callable[[Tensor], None]],
                 batches: Iterable, stop: bool = False) -> None:
    """Run ``batches`` (eval mode, no grad); hooks[name](x (tokens, in)) sees every input of
    the named Linear. ``stop``: end each forward at the first hooked call."""
    modules = dict(model.named_modules())

    def wrap(fn: Callable[[Tensor], None]):
        def hook(module: nn.Module, args: tuple) -> None:
            fn(args[0].detach().reshape(-1, module.in_features).float())
            if stop:
                raise _Stop
        return hook

    handles = [modules[n].register_forward_pre_hook(wrap(fn)) for n, fn in hooks.items()]
    training, n_batches = model.training, 0
    model.eval()
    try:
        for n_batches, batch in enumerate([batches] if isinstance(batches, Tensor) else batches,
                                          start=1):
            try:
                run_batch(model, batch)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    if n_batches == 0:
        raise ValueError("calibration is empty (0 batches); pass at least one batch")


def _inputs(model: nn.Module, names: Sequence[str], batches: Iterable, stop: bool = False
            ) -> dict[str, list[Tensor]]:
    """Every call's input of each named Linear, checked, in forward order of first call."""
    seen: dict[str, list[Tensor]] = {}
    _hooked_pass(model, {n: lambda x, n=n: seen.setdefault(n, []).append(x) for n in names},
                 batches, stop)
    never = [n for n in names if n not in seen]
    if never:
        raise ValueError(f"layers {never} were never called by the model's forward")
    for n, xs in seen.items():
        if sum(len(x) for x in xs) == 0:
            raise ValueError(f"calibration is empty: layer {n!r} received 0 tokens")
        if not all(bool(torch.isfinite(x).all()) for x in xs):
            raise ValueError(f"calibration inputs of layer {n!r} hold NaN or Inf; only "
                             "finite calibration data is allowed")
    return seen


def calibration_inputs(model: nn.Module, layers: Sequence[str] | None, batches: Iterable
                       ) -> dict[str, Tensor]:
    """The inputs each chosen nn.Linear receives on ``batches``, as (tokens, in) float32.

    Forward pre-hooks record every call (inputs flattened to (tokens, in), calls
    concatenated); the model runs in eval mode without gradients. ``layers`` are names
    (None: every nn.Linear); ``batches`` yields inputs, (input, target) pairs or dicts of
    keyword arguments (a single tensor is one batch). The dict is in forward order.

    >>> lin = nn.Linear(3, 2)
    >>> calibration_inputs(lin, None, [torch.ones(2, 5, 3)])[""].shape
    torch.Size([10, 3])
    """
    chosen = _linears(model, layers)
    return {n: torch.cat(xs) for n, xs in _inputs(model, list(chosen), batches).items()}


def _error_pass(model: nn.Module, pairs: dict[str, tuple[Tensor, Tensor]], batches: Iterable
                ) -> dict[str, float]:
    """||X (W - W_hat)^T||^2 / ||X W^T||^2 per layer, X its inputs in ``model`` (one pass)."""
    sums = {n: torch.zeros(2, dtype=torch.float64) for n in pairs}

    def acc(x: Tensor, n: str) -> None:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"calibration inputs of layer {n!r} hold NaN or Inf")
        w, w_hat = pairs[n]
        sums[n] += torch.stack([((x @ (w - w_hat).T).double() ** 2).sum(),
                                ((x @ w.T).double() ** 2).sum()])

    _hooked_pass(model, {n: lambda x, n=n: acc(x, n) for n in pairs}, batches)
    return {n: float(s[0] / s[1]) if s[1] > 0 else 0.0 for n, s in sums.items()}


def _quantize_one(method: str, w: Tensor, x: Tensor | None, bits: int, group: int | None,
                  kw: dict[str, Any]) -> tuple[Tensor, int, dict[str, Any]]:
    """(W_hat, packed bytes, extra report fields) for one (out, in) weight."""
    n_out, n_in = w.shape
    sym = kw.get("symmetric", False)
    if method in _INTEGER:
        size = packed_bytes(n_out, n_in, bits, group, symmetric=sym)
        if method == "rtn":
            return rtn_quantize(w, bits, group_size=group, symmetric=sym).weight, size, {}
        if method == "gptq":
            return gptq_quantize(w, x, bits=bits, group_size=group, **kw).weight, size, {}
        r = awq_quantize(w, x, lambda v: rtn_quantize(v, bits, group_size=group,
                                                     symmetric=sym).weight,
                         n_grid=kw.get("n_grid", 20), clip=kw.get("clip", False),
                         clip_group_size=group or n_in)
        return r.weight, size, {"alpha": r.alpha}   # s folds into the previous op: no bytes
    if method == "nf4":
        return (nf4_fake_quantize(w, block_size=group),
                nf4_packed_bytes(w.numel(), group, double_quant=kw.get("double_quant", False)),
                {})
    if method.startswith("fp8_"):                   # per-channel float32 scale
        return fp8_fake_quantize(w, method[4:], axis=0), w.numel() + 4 * n_out, {}
    return mx_fake_quantize(w, method), math.ceil(w.numel() * bits_per_value(method) / 8), {}


@torch.no_grad()
def quantize_linear_weights(model: nn.Module, method: str, calibration: Iterable | None = None,
                            *, bits: int | None = None, group_size: int | None = None,
                            layers: Sequence[str] | None = None, sequential: bool = True,
                            **method_kw: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose Linear weights are quantized with ``method``, and a report.

    ``method`` in :data:`METHODS`; ``method_kw`` as ``METHODS[method]`` lists (e.g.
    ``act_order=True`` for gptq). rtn / gptq / awq need ``bits`` (2..8) and take
    ``group_size`` (None: per channel); the formats fix their bits (None is fine) and
    scales: nf4 blocks of ``group_size`` (default 64), MX blocks of 32, FP8 per channel.
    ``layers`` names the Linears (default every ``nn.Linear``, an ``lm_head`` included).

    Layers are quantized in the order the forward first calls them. ``calibration``
    (batches as in :func:`calibration_inputs`) is required by gptq and awq, optional
    otherwise. With ``sequential=True`` (the GPTQ paper's way, used for AWQ too) layer i's
    calibration inputs are gathered with layers < i already quantized (one pass per
    layer, ended early after that layer), so each layer corrects the error upstream;
    ``sequential=False`` takes every layer's inputs from the float model.

    Report: "method", "bits", "group_size", "sequential", "packed_bytes" and "float_bytes"
    (fp32) summed, and "layers": per layer "name", "shape", "packed_bytes", "float_bytes",
    "weight_rel_error" ||W - W_hat||^2 / ||W||^2, "rel_error" ||X (W - W_hat)^T||^2 /
    ||X W^T||^2 on its calibration inputs X (None without calibration), awq's "alpha".
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    unknown = sorted(set(method_kw) - set(METHODS[method]))
    if unknown:
        raise ValueError(f"method {method!r} takes no {unknown}; allowed: {METHODS[method]}")
    fixed = _FORMAT_BITS.get(method)
    if fixed is not None and bits not in (None, fixed):
        raise ValueError(f"method {method!r} stores {fixed} bits per value; bits must be None "
                         f"or {fixed}, got {bits!r}")
    bits = _check_bits(bits) if fixed is None else fixed
    if method.startswith(("fp8", "mx")) and group_size not in (None, _GROUP.get(method)):
        raise ValueError(f"{method} fixes its scales (FP8 per channel, MX blocks of 32); "
                         f"group_size must be None{' or 32' if method in _GROUP else ''}, "
                         f"got {group_size!r}")
    group_size = _GROUP.get(method) if group_size is None else group_size
    qmodel = copy.deepcopy(model)
    chosen = _linears(qmodel, layers)
    for name, m in chosen.items():
        _check_group(group_size, m.in_features, f" of layer {name!r}")
    needs_x = method in ("gptq", "awq")
    batches = None if calibration is None else (
        [calibration] if isinstance(calibration, Tensor) else list(calibration))
    if batches is not None and not batches:
        raise ValueError("calibration is empty (0 batches); pass at least one batch")
    if batches is None and needs_x:
        raise ValueError(f"method {method!r} needs calibration batches (inputs of the model)")
    order, once = list(chosen), False
    if batches:  # forward order (and calls per forward) from the first batch
        first = _inputs(qmodel, list(chosen), batches[:1])
        order, once = list(first), all(len(xs) == 1 for xs in first.values())
    source = qmodel if sequential else model     # who feeds the layers their inputs
    pairs, rows = {}, []
    for name in order:
        layer, x = chosen[name], None
        if needs_x:  # one pass per layer, cut short after it when each layer runs once
            x = torch.cat(_inputs(source, [name], batches, stop=once)[name])
        w = layer.weight.detach().float().clone()               # (out, in), kept for the report
        w_hat, size, extra = _quantize_one(method, w, x, bits, group_size, method_kw)
        layer.weight.copy_(w_hat.to(layer.weight.dtype))
        pairs[name] = (w, w_hat)
        d2, w2 = float(((w - w_hat).double() ** 2).sum()), float((w.double() ** 2).sum())
        rows.append({"name": name, "shape": tuple(w.shape), "packed_bytes": size,
                     "float_bytes": 4 * w.numel(), "weight_rel_error": d2 / w2 if w2 else 0.0,
                     "rel_error": None, **extra})
    if batches:  # one pass: the quantized model feeds layer i the inputs it was given
        errors = _error_pass(source, pairs, batches)
        for r in rows:
            r["rel_error"] = errors[r["name"]]
    report = {"method": method, "bits": bits, "group_size": group_size,
              "sequential": sequential, "layers": rows,
              "packed_bytes": sum(r["packed_bytes"] for r in rows),
              "float_bytes": sum(r["float_bytes"] for r in rows)}
    return qmodel, report
