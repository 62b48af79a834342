"""The bottom layer: seeding, argument checks, atomic writes and the layer walk every
technique shares. Imports nothing from qlib.

One definition each (the layering test holds it): modules import these public names
instead of each other's ``_private`` helpers.

>>> check_bits(4), check_sparsity(0.5)
(4, 0.5)
>>> list(weight_layers(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())))
['0']
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["set_seed", "LossFn", "Inputs", "check_bits", "check_finite", "check_tensor",
           "check_int", "check_sparsity", "check_finite_number", "as_real_tensor",
           "check_logits", "check_module", "as_args", "inference", "batch_inputs",
           "run_batch", "weight_layers", "set_submodule", "WEIGHT_LAYERS",
           "OTHER_CONVS", "warn_other_convs"]

#: ``loss_fn(model, x, y) -> scalar``: what fit, distillation, QAT and pruning pass around.
LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]

#: One example input: a tensor / array, or a tuple / list of positional inputs.
Inputs = Tensor | np.ndarray | tuple | list

#: The layers with a weight that the techniques compress.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch, and ask PyTorch for deterministic kernels.

    Introduced in notebook 00. Same seed, same numbers: every notebook starts with
    ``qlib.set_seed(0)``. The kernels are switched as ``torch.use_deterministic_algorithms
    (True, warn_only=True)`` switches them, without that function's import of torch.compile's
    inductor and dynamo (2-4 s on 2 cores, saved in every kernel that trains nothing: a torch
    optimizer imports dynamo when it is built); inductor's own flag is set too when it is
    already loaded.

    >>> set_seed(0); a = torch.rand(2); set_seed(0); torch.equal(a, torch.rand(2))
    True
    >>> torch.are_deterministic_algorithms_enabled()
    True
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # what torch.use_deterministic_algorithms does, less `import torch._inductor.config`
    torch._C._set_deterministic_algorithms(True, warn_only=True)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = True


# ----- argument checks: each says what was wrong and what is allowed -------------------

def check_bits(bits: int, name: str = "bits") -> int:
    """``bits`` as an int in 1..16, or ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"{name} must be an int in 1..16, got {bits!r}")
    return bits


def check_tensor(x: object, name: str = "x") -> Tensor:
    """``x`` itself when it is a real torch.Tensor; TypeError for anything else."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it "
                        f"with torch.as_tensor(...)")
    if x.is_complex():
        raise TypeError(f"{name} is complex ({x.dtype}); only real tensors are allowed")
    return x


def check_finite(x: Tensor, name: str = "x") -> Tensor:
    """``x`` when it holds no NaN / Inf; ValueError naming ``name`` otherwise (one pass)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())  # only on the error path
        raise ValueError(f"{name} holds NaN or Inf ({bad} of {x.numel()} values); only "
                         f"finite values are allowed")
    return x


def check_int(value: Any, name: str, low: int) -> int:
    """``value`` as an int >= ``low`` (a NumPy integer is fine), or ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1] (the fraction of weights to remove)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{what} must be a number in [0, 1], got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) <= 1.0:  # also rejects NaN
        raise ValueError(f"{what} must be in [0, 1] (the fraction of weights to remove), "
                         f"got {sparsity}")
    return float(sparsity)


def check_finite_number(value: Any, name: str, low: float | None = None,
                        high: float | None = None, *, strict: bool = False) -> float:
    """``value`` as a float: a finite real number (int, float, NumPy scalar or one-value
    tensor) in [low, high], or in (low, high) when ``strict``. TypeError for anything else
    (bool, str, None, complex), ValueError for NaN, Inf or a value out of range.

    >>> check_finite_number(2, "temperature", 0, strict=True)
    2.0
    """
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, (bool, np.bool_, np.complexfloating)) or \
            not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} "
                        f"({value!r})")
    v = float(value)
    o, c = ("(", ")") if strict else ("[", "]")
    if low is not None and high is not None:
        allowed = f" in {o}{low:g}, {high:g}{c}"
    elif low is not None:
        allowed = f" {'>' if strict else '>='} {low:g}"
    elif high is not None:
        allowed = f" {'<' if strict else '<='} {high:g}"
    else:
        allowed = ""
    below = low is not None and (v <= low if strict else v < low)
    above = high is not None and (v >= high if strict else v > high)
    if v != v or abs(v) == float("inf") or below or above:
        raise ValueError(f"{name} must be a finite number{allowed}, got {value!r}")
    return v


def as_real_tensor(x: object, name: str = "x") -> Tensor:
    """``x`` as a real tensor: a tensor as it is, a number, NumPy array or nested list
    converted; TypeError naming ``name`` for None, strings, complex values and the rest."""
    if not isinstance(x, Tensor):
        if x is None or isinstance(x, (str, bytes)):
            raise TypeError(f"{name} must be a real tensor, array or number, got "
                            f"{type(x).__name__}")
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a real tensor, array or number, got "
                            f"{type(x).__name__} that torch.as_tensor cannot convert") from None
    return check_tensor(x, name)


def check_logits(logits: object, name: str = "logits") -> Tensor:
    """``logits`` when it is a real (N, classes) tensor with N, classes >= 1 and no NaN /
    Inf (one pass over it); TypeError or ValueError naming ``name`` otherwise."""
    x = check_tensor(logits, name)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{name} must be (N, classes) logits with N >= 1 rows and at least "
                         f"one class, got shape {tuple(x.shape)}")
    return check_finite(x, name)


def check_module(model: Any, what: str) -> nn.Module:
    """``model`` when it is an nn.Module; TypeError naming the caller otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} needs an nn.Module, got {type(model).__name__}")
    return model


def as_args(example_input: Inputs) -> tuple:
    """A tensor / array becomes a 1-tuple; a tuple or list is passed as positional args."""
    if isinstance(example_input, (Tensor, np.ndarray)):
        return (example_input,)
    if isinstance(example_input, (tuple, list)) and len(example_input) > 0:
        return tuple(example_input)
    raise TypeError("example_input must be a tensor, an array or a non-empty tuple/list of "
                    f"inputs, got {type(example_input).__name__}")


@contextmanager
def inference(model: Any, threads: int | None = None) -> Iterator[None]:
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


# ----- the layers techniques work on --------------------------------------------------

def batch_inputs(batch: object) -> Tensor:
    """The inputs of a batch: ``x`` of an ``(x, y)`` pair (or list), else the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def run_batch(model: nn.Module, batch: object) -> object:
    """One forward on a calibration batch: a tensor is the input, a tuple / list's first
    item is (``(x, y)`` pairs), a dict holds keyword arguments."""
    if isinstance(batch, dict):
        return model(**batch)
    return model(batch_inputs(batch))


def weight_layers(model: nn.Module, types: tuple[type[nn.Module], ...] = WEIGHT_LAYERS
                  ) -> dict[str, nn.Module]:
    """The layers of ``model`` that are instances of ``types`` (subclasses included), by
    name in registration order. The one answer to "which layers have weights" for
    quantization and pruning alike; empty when there is none (callers say what they need).
    """
    check_module(model, "weight_layers")
    return {n: m for n, m in model.named_modules() if isinstance(m, types)}


#: Convolutions that the Conv2d / Linear techniques leave as they are (named by a warning).
OTHER_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d,
                                            nn.ConvTranspose2d, nn.ConvTranspose3d)


def warn_other_convs(model: nn.Module, what: str) -> list[str]:
    """Warn once, naming them, when ``model`` holds convolutions ``what`` leaves unchanged.

    Quantization, pruning and k-means sharing work on ``Conv2d`` and ``Linear`` weights; a
    ``Conv1d`` (or 3-d, or transposed) conv stays float and dense, and a learner should hear
    so rather than read a size that silently excludes it. Returns the names.
    """
    names = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
             if isinstance(m, OTHER_CONVS)]
    if names:
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        warnings.warn(f"{what} handles Conv2d and Linear layers only; these stay as they are "
                      f"(float, dense): {shown}", stacklevel=3)
    return names


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted, as in named_modules) by ``module``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
