"""qlib: the shared, tested library behind the compression course.

One module, one idea (see README's course map):

    data      datasets and loaders          (notebook 00)
    models    the course models             (notebook 00)
    train     fit / evaluate, checkpoints   (notebook 00)
    metrics   accuracy, P/R/F1, confusion   (notebook 00)
    bench     latency, size, memory, MACs   (notebook 00)
    footprint params, MACs, peak memory     (notebook 00, via bench)
    plots     figures                       (notebooks 00, 07)
    widgets   interactive explorers         (notebook 01)
    quant     quantization                  (notebooks 01-04)
    onnx      ONNX export and ONNX Runtime  (notebook 03)
    deploy    the deploy benchmark          (notebook 03)
    prune     unstructured pruning          (notebook 05)
    gradual   gradual pruning schedule      (notebook 05)
    channels  structured channel pruning    (notebook 05)
    sparse    sparse on-disk storage        (notebook 05)
    distill   knowledge distillation        (notebook 06)
    stats     intervals, paired tests, ECE  (notebook 07)
    entropy   Huffman coding                (notebook 08)
    compress  the Deep Compression pipeline (notebook 08)
    recipes   named compression recipes     (notebook 00 on)
    report    the comparison report         (notebook 07)
    check     exercise checkers             (every notebook)
    workbook  student copies                (make workbook)
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__version__ = "0.1.0"
__all__ = ["set_seed", "__version__"]


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch, and ask PyTorch for deterministic kernels.

    Introduced in notebook 00. Same seed, same numbers: every notebook starts with
    ``qlib.set_seed(0)``.

    >>> set_seed(0); a = torch.rand(2); set_seed(0); torch.equal(a, torch.rand(2))
    True
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
