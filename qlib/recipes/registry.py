"""What a recipe is: ``(baseline, data) -> Variant``, and the Variant it returns.

Introduced in notebook 00 (the baseline row) and used by every technique notebook. A
*recipe* takes the trained fp32 model and its data and returns the compressed model
together with the facts only the recipe knows (its file size on disk, parameter and
non-zero counts). A recipe never modifies the baseline in place. :mod:`qlib.evaluate`
then measures every variant the same way, so that rows compare; :mod:`qlib.recipes.catalog`
lists every recipe by name, explicitly.

>>> v = Variant.from_module("identity", "none", nn.Linear(2, 2))
>>> v.name, v.params, v.size_bytes > 16
('identity', 6, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..data import Splits
from ..measure import count_nonzeros, count_parameters, model_size_bytes

__all__ = ["Variant", "Recipe", "RecipeFn", "EXECUTIONS"]

#: How a variant's model runs, which decides what its speed is measured against (notebook 08):
#: "eager": PyTorch eager float32, timed against the baseline module;
#: "ort": ONNX Runtime, timed against ``Variant.reference`` (the baseline in ONNX Runtime fp32);
#: "simulated": fake quantization or emulated integer arithmetic in PyTorch; not how it
#: would be deployed, so the report gives it no speed verdict.
EXECUTIONS = ("eager", "ort", "simulated")


@dataclass
class Variant:
    """A compressed (or baseline) model as the report sees it.

    ``model`` maps a float batch (N, C, H, W) to logits (N, classes): an ``nn.Module`` or
    any callable (an ONNX Runtime session wrapped in a function, say). ``size_bytes`` is
    the size of the file the recipe would ship; ``params`` counts stored weights and
    ``nonzeros`` those not zero. ``extra`` carries anything else worth reporting.
    ``execution`` (one of :data:`EXECUTIONS`) says how the model runs; an "ort" variant
    carries its ``reference``, the fp32 model in the same runtime that its speed is
    measured against (eager variants are measured against the baseline itself).
    """

    name: str
    technique: str
    model: nn.Module | Callable[[Tensor], Tensor]
    size_bytes: int
    params: int
    nonzeros: int
    extra: dict = field(default_factory=dict)
    execution: str = "eager"
    reference: nn.Module | Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {self.execution!r}")
        if self.execution == "ort" and self.reference is None:
            raise ValueError(f"variant {self.name!r} runs in ONNX Runtime but has no reference: "
                             "pass the baseline exported to ONNX Runtime fp32 as reference=")

    @classmethod
    def from_module(cls, name: str, technique: str, model: nn.Module, **extra) -> "Variant":
        """A variant whose file is the module's plain ``torch.save`` state dict."""
        return cls(name, technique, model.eval(), model_size_bytes(model),
                   count_parameters(model), count_nonzeros(model), dict(extra))


RecipeFn = Callable[[nn.Module, Splits], Variant]


@dataclass(frozen=True)
class Recipe:
    """A named recipe: ``fn(baseline, data) -> Variant``, its technique and one line on it."""

    name: str
    technique: str
    description: str
    fn: RecipeFn
    task: str = "vision"  # "vision": the CNN baseline; "lm": the course language model
