"""A real int8 runtime: export to ONNX and quantize with ONNX Runtime (static QDQ, dynamic).

Introduced in notebook 03. ``torch.ao.quantization`` is deprecated, so the course ships
int8 models through ONNX Runtime (ORT)::

    nn.Module --export_onnx--> model.onnx (fp32, BN folded, dynamic batch)
              --quantize_static_ort(calibration batches)--> model-int8.onnx (QDQ)
              --OrtModel--> callable: float tensor (N, C, H, W) -> logits (N, classes)

Static QDQ quantization inserts ``QuantizeLinear -> DequantizeLinear`` pairs around each
Conv / Gemm with scales fixed by calibration: ``q = clamp(round(x / s) + z, qmin, qmax)``,
activations u8 per tensor (asymmetric, range from the calibration batches), weights s8
per output channel (symmetric, z = 0). At load time ORT fuses ``DQ -> Conv -> Q`` into
one ``QLinearConv`` that runs u8 x s8 dot products with int32 accumulation (VNNI on this
CPU). Dynamic quantization stores s8 weights but computes activation ranges at every call
(``DynamicQuantizeLinear`` + ``ConvInteger``): no calibration, and slower for convolutions.

>>> path = export_onnx(course_model(), torch.zeros(1, 1, 28, 28), "/tmp/c.onnx")  # doctest: +SKIP
>>> OrtModel(path)(torch.zeros(4, 1, 28, 28)).shape                                # doctest: +SKIP
torch.Size([4, 10])

``onnx`` and ``onnxruntime`` load inside the functions that use them: ``onnx`` brings
``ml_dtypes`` (about a second), and every process that imports :mod:`qlib.evaluate`
(through the recipe catalog) would pay it, though few export, quantize or run anything.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from .._files import atomic_write

if TYPE_CHECKING:  # annotations only; at run time the functions import it
    from onnxruntime.quantization import QuantType

__all__ = ["export_onnx", "OrtModel", "TensorCalibrationReader", "quantize_static_ort",
           "quantize_dynamic_ort", "onnx_op_counts", "ACTIVATION_TYPES"]

#: Activation integer types accepted by :func:`quantize_static_ort`.
ACTIVATION_TYPES = ("uint8", "int8")


def _check_image_batch(x: object, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] < 1 or not x.is_floating_point():
        raise ValueError(f"{what} must be a float tensor (N, C, H, W) with N >= 1, got "
                         f"dtype {x.dtype} and shape {tuple(x.shape)}")
    return x


def export_onnx(model: nn.Module, example_input: Tensor, path: str | Path, *,
                opset: int = 20) -> Path:
    """Export ``model`` (eval mode, BN folded) to an ONNX file with a dynamic batch dim.

    Introduced in notebook 03. Uses ``torch.onnx.export(dynamo=True)`` (the torch.export
    based exporter; the TorchScript one is deprecated) with the ONNX optimizer on, which
    folds each eval-mode ``BatchNorm`` into the preceding conv:
    ``w' = w * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
    The graph has one input ``"input"`` (N, C, H, W) with N symbolic ("batch") and one
    output ``"logits"`` (N, classes). Only ``example_input.shape[1:]`` matters. The model
    is not changed (a copy is exported) and the file is written atomically.

    >>> export_onnx(course_model(), torch.zeros(1, 1, 28, 28), "c.onnx").name  # doctest: +SKIP
    'c.onnx'
    """
    import onnx  # lazy: onnx loads ml_dtypes (about 1 s); only export and file readers need it

    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx needs an nn.Module, got {type(model).__name__}")
    x = _check_image_batch(example_input, "example_input")
    work = copy.deepcopy(model).cpu().eval()
    # Trace at batch 2: a size-1 example dim is specialised away by torch.export.
    x2 = x[:1].detach().cpu().float().expand(2, *x.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    with atomic_write(path, ".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations inside torch)
        torch.onnx.export(work, (x2,), str(tmp), dynamo=True, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), optimize=True,
                          external_data=False, verbose=False)
        onnx.checker.check_model(str(tmp))
    return Path(path)


def onnx_op_counts(path: str | Path) -> dict[str, int]:
    """Node count per op type of an ONNX file, e.g. ``{"Conv": 2, "Relu": 3, ...}``.

    Introduced in notebook 03 to show what export and quantization did to the graph
    (no ``BatchNormalization`` after folding; ``QuantizeLinear`` / ``DequantizeLinear``
    pairs after static QDQ quantization).
    """
    import onnx  # lazy: onnx loads ml_dtypes (about 1 s); only export and file readers need it

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


class OrtModel:
    """An ONNX Runtime CPU session as a model: float tensor (N, C, H, W) -> logits tensor.

    Introduced in notebook 03. ``threads`` sets ``intra_op_num_threads`` (pin it, as for
    PyTorch, when timing); worker threads do not spin between calls, so that an
    interleaved benchmark's other runtimes get the cores. The graph is optimised at load
    (all levels): this is where ``DQ -> Conv -> Q`` becomes ``QLinearConv``.

    >>> m = OrtModel("c.onnx"); m(torch.zeros(3, 1, 28, 28)).shape  # doctest: +SKIP
    torch.Size([3, 10])
    """

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        self.path, self.threads = Path(path), threads
        if not self.path.is_file():
            raise ValueError(f"no ONNX file at {str(self.path)!r}")
        import onnxruntime as ort  # lazy: its native library loads only for a session

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), opts,
                                            providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, tuple(inp.shape)  # e.g. ('batch', 1, 28, 28)

    @property
    def size_bytes(self) -> int:
        """Bytes of the ONNX file on disk (what would be shipped)."""
        return self.path.stat().st_size

    def __call__(self, x: Tensor) -> Tensor:
        x = _check_image_batch(x, "OrtModel input")
        want = self.input_shape[1:]
        if any(isinstance(w, int) and w != g for w, g in zip(want, x.shape[1:])):
            raise ValueError(f"OrtModel input must have shape (N, {', '.join(map(str, want))})"
                             f", got {tuple(x.shape)}")
        arr = x.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])

    def __getstate__(self) -> dict:  # copy / pickle by reopening the file
        return {"path": self.path, "threads": self.threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], threads=state["threads"])

    def __repr__(self) -> str:
        return f"OrtModel({str(self.path)!r}, threads={self.threads})"


class TensorCalibrationReader:
    """ORT ``CalibrationDataReader`` over a list of float batches (N, C, H, W).

    Introduced in notebook 03. ``get_next()`` returns ``{input_name: array}`` per batch and
    ``None`` when done; ``rewind()`` starts over; iterating yields the same dicts. ORT's
    ``CalibrationDataReader`` counts any class with a ``get_next`` method as its subclass
    (``isinstance`` holds), so this one need not import ``onnxruntime.quantization`` (and
    ``onnx``) to inherit from it. Feed it from ``qlib.data``:
    ``TensorCalibrationReader(calibration_batches(data))`` (training images; calibrating on
    test images would leak the test set).

    >>> r = TensorCalibrationReader([torch.zeros(2, 1, 28, 28)]); r.get_next()["input"].shape
    (2, 1, 28, 28)
    """

    def __init__(self, batches: Iterable[Tensor], input_name: str = "input") -> None:
        if isinstance(batches, Tensor):
            raise TypeError("batches must be an iterable of (N, C, H, W) tensors (e.g. "
                            "qlib.data.calibration_batches(...)), not one tensor")
        self.input_name = input_name
        self.batches = [_check_image_batch(b, "calibration batch").detach().cpu().float()
                        .numpy() for b in batches]
        if not self.batches:
            raise ValueError("the calibration set is empty: give at least one batch (N, C, "
                             "H, W); an empty set cannot set activation ranges")
        shapes = {b.shape[1:] for b in self.batches}
        if len(shapes) > 1:
            raise ValueError(f"calibration batches must share one (C, H, W), got {shapes}")
        self._next = 0

    def __len__(self) -> int:
        return len(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.batches):
            return None
        self._next += 1
        return {self.input_name: self.batches[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0

    # what CalibrationDataReader gave by inheritance: iteration over get_next()
    def __iter__(self) -> TensorCalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _qtype(name: str) -> QuantType:
    # lazy: onnxruntime.quantization imports onnx (about 1 s); only quantizing needs it
    from onnxruntime.quantization import QuantType

    if name not in ACTIVATION_TYPES:
        raise ValueError(f"activation type must be one of {ACTIVATION_TYPES}, got {name!r}")
    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


def _model_input_name(path: Path) -> str:
    import onnx  # lazy: onnx loads ml_dtypes (about 1 s); only export and file readers need it

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits][0]


@contextmanager
def _quiet_preprocess_hint() -> Iterator[None]:
    """Drop ORT's root-logger hint to pre-process first: measured, it changes nothing here."""
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_static_ort(src: str | Path, dst: str | Path,
                        calibration: Iterable[Tensor] | TensorCalibrationReader, *,
                        activation: str = "uint8", per_channel: bool = True,
                        reduce_range: bool = False, preprocess: bool = False) -> Path:
    """Static QDQ int8 quantization of an fp32 ONNX file with ONNX Runtime; returns ``dst``.

    Introduced in notebook 03. Weights s8, symmetric, per output channel (``per_channel``);
    activations ``activation`` ("uint8": asymmetric u8, the fast u8 x s8 path of x86's
    VPMADDUBSW / VPDPBUSD, see :mod:`qlib.runtime.x86`; "int8": s8, symmetric-capable,
    measured slower here, since AVX2 / VNNI take u8 x s8 only) with per-tensor ranges
    from MinMax calibration on ``calibration`` (batches (N, C, H, W) or a
    :class:`TensorCalibrationReader`). Weight scales use ORT's restricted symmetric range
    [-127, 127]: ``s_w = max|w| / 127`` per channel; biases are stored as int32 at scale
    ``S_x * S_w``. ``reduce_range`` uses 7-bit weights (needed only on CPUs without VNNI;
    costs accuracy: ResNet-18 logits 31 dB instead of 36 dB SQNR); ``preprocess`` runs
    ORT's ``quant_pre_process`` (shape inference + graph optimization) first; the
    exporter's graph is already optimized, and neither changed speed measurably here.
    The file is written atomically.

    >>> quantize_static_ort("c.onnx", "c-int8.onnx", calibration_batches(data))  # doctest: +SKIP
    PosixPath('c-int8.onnx')
    """
    # lazy: onnxruntime.quantization imports onnx (about 1 s); only quantizing needs it
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    src = Path(src)
    if not src.is_file():
        raise ValueError(f"no ONNX file at {str(src)!r}")
    act = _qtype(activation)
    name = _model_input_name(src)
    reader = (calibration if isinstance(calibration, TensorCalibrationReader)
              else TensorCalibrationReader(calibration, name))
    if reader.input_name != name:
        raise ValueError(f"the calibration reader feeds input {reader.input_name!r} but the "
                         f"model's input is {name!r}")
    reader.rewind()
    with atomic_write(dst, ".onnx") as tmp, tempfile.TemporaryDirectory() as work:
        model_in = src
        if preprocess:
            model_in = Path(work) / "pre.onnx"
            quant_pre_process(str(src), str(model_in))
        with _quiet_preprocess_hint():
            quantize_static(str(model_in), str(tmp), reader, quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=act, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    return Path(dst)


def quantize_dynamic_ort(src: str | Path, dst: str | Path, *, per_channel: bool = True
                         ) -> Path:
    """Dynamic int8 quantization with ONNX Runtime: s8 weights, activation ranges per call.

    Introduced in notebook 03. Each quantized op becomes ``DynamicQuantizeLinear`` (u8,
    ``s = (max(x, 0) - min(x, 0)) / 255`` of the live tensor) followed by ``ConvInteger`` /
    ``MatMulInteger`` with int32 output and a float rescale: no calibration set, but the range
    pass and the slow ``ConvInteger`` kernel make convolutions slower than fp32 here.

    >>> quantize_dynamic_ort("c.onnx", "c-dyn.onnx")  # doctest: +SKIP
    PosixPath('c-dyn.onnx')
    """
    # lazy: onnxruntime.quantization imports onnx (about 1 s); only quantizing needs it
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = Path(src)
    if not src.is_file():
        raise ValueError(f"no ONNX file at {str(src)!r}")
    with atomic_write(dst, ".onnx") as tmp, _quiet_preprocess_hint():
        quantize_dynamic(str(src), str(tmp), per_channel=per_channel,
                         weight_type=QuantType.QInt8)
    return Path(dst)
