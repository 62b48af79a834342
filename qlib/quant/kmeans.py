"""k-means weight sharing (Deep Compression, Han et al. 2016): a codebook per layer.

Introduced in notebook 02, next to linear quantization at the same bit width. Each
layer's weights are clustered into k = 2^b values (the codebook); the layer then stores a
b-bit index per weight plus the k float centroids. Unlike a uniform grid, the centroids
crowd where the weights are, so the same b bits give a smaller error on bell-shaped
weights. Clustering is Lloyd's algorithm in 1-D with the *linear* initialisation that
Deep Compression found best (centroids evenly spaced over [min w, max w]); checked against
scikit-learn's ``KMeans`` from the same start in ``tests/test_quant_ptq.py``. The values are
sorted once, so each iteration costs O(k log n) (cluster sums from running sums) instead
of O(n): a ResNet-18 takes seconds, not minutes.

    assign:  i_j = argmin_c |w_j - c_c|           update:  c_c = mean{w_j : i_j = c}

>>> cb, idx = kmeans_codebook(torch.tensor([0.0, 0.1, 0.9, 1.0]), 1)
>>> cb, idx
(tensor([0.0500, 0.9500]), tensor([0, 0, 1, 1]))
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .._util import WEIGHT_LAYERS, check_bits, check_finite, warn_other_convs

__all__ = ["kmeans_codebook", "kmeans_quantize_model"]


def kmeans_codebook(w: Tensor, bits: int, *, max_iter: int = 300, name: str = "w"
                    ) -> tuple[Tensor, Tensor]:
    """Cluster the values of ``w`` into 2^bits centroids with 1-D Lloyd's iterations.

    Returns ``codebook`` float32 (2^bits,), sorted ascending, and ``indices`` int64 with
    w's shape, so that ``codebook[indices]`` is the shared-weight tensor. Deterministic
    (linear init, no randomness); stops when no assignment changes. An empty cluster keeps
    its centroid. ``name`` says what ``w`` is in error messages (e.g. "the weight of
    layer 'fc'"): ValueError for an empty ``w`` or one holding NaN / Inf. Notebook 02.

    >>> kmeans_codebook(torch.zeros(0), 2, name="the weight of layer 'fc'")
    Traceback (most recent call last):
    ValueError: the weight of layer 'fc' is empty: there is nothing to cluster ...
    """
    bits = check_bits(bits)
    check_finite(w, name)
    if w.numel() == 0:
        raise ValueError(f"{name} is empty: there is nothing to cluster (e.g. every "
                         "weight of the layer was pruned: prune it less)")
    x = w.detach().reshape(-1).double()
    xs, order = torch.sort(x)  # in 1-D a cluster is a run of the sorted values
    prefix = torch.cat([x.new_zeros(1), torch.cumsum(xs, 0)])  # (n + 1,) running sums
    k = 1 << bits
    c = torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64)
    ends = None
    for _ in range(max_iter):
        # In 1-D the nearest centroid is found by the midpoints between sorted centroids
        # (a tie goes to the lower one, as argmin): cluster j ends where x > midpoint j.
        new = torch.searchsorted(xs, (c[1:] + c[:-1]) / 2, right=True)  # (k - 1,)
        if ends is not None and torch.equal(new, ends):
            break
        ends = new
        edges = torch.cat([ends.new_zeros(1), ends, ends.new_full((1,), len(xs))])
        counts = (edges[1:] - edges[:-1]).double()
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    idx = torch.empty_like(order)
    idx[order] = torch.bucketize(torch.arange(len(xs)), ends, right=True)
    return c.float(), idx.view(w.shape)


@torch.no_grad()
def kmeans_quantize_model(model: nn.Module, bits: int, *, inplace: bool = False
                          ) -> tuple[nn.Module, dict[str, tuple[Tensor, Tensor]]]:
    """Replace every Conv2d / Linear weight by its k-means shared version (a copy).

    Returns the model (weights now take at most 2^bits distinct values per layer) and
    ``{layer name: (codebook, indices)}``, which :func:`~qlib.quant.packing.packed_state`
    stores as b-bit indices plus the codebook. Biases stay float.

    >>> from qlib.models import mlp
    >>> m, books = kmeans_quantize_model(mlp(), 2)
    >>> sorted(books), m[1].weight.unique().numel()
    (['1', '3'], 4)
    """
    warn_other_convs(model, "k-means weight sharing")
    model = model if inplace else copy.deepcopy(model)
    books = {}
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_LAYERS):
            codebook, idx = kmeans_codebook(m.weight, bits, name=f"the weight of layer "
                                                                 f"{name!r}")
            m.weight.copy_(codebook[idx])
            books[name] = (codebook, idx)
    if not books:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to share "
                         "weights in")
    return model, books
