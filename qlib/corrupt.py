"""Seeded image corruptions in the style of MNIST-C: the course's harder offline data set.

Introduced in notebook 07 (section "A harder data set"). MNIST-C (Mu & Gilmer, 2019,
"MNIST-C: A Robustness Benchmark for Computer Vision", arXiv:1906.02337) applies standard
corruptions to the MNIST test images. Here every image of the embedded 5,000-image sample
(train, validation and test alike) gets a combination of four of them, with per-image
strengths drawn from one seeded generator, so the set is the same on every machine and
needs nothing from the internet:

1. an affine transform (MNIST-C's rotate / scale / translate): rotation ``a`` in
   ``[-max_rotate, max_rotate]`` degrees, zoom ``s`` in ``[1 - max_zoom, 1 + max_zoom]``,
   shift ``(dx, dy)`` in ``[-max_shift, max_shift]`` pixels, bilinear, zero fill;
2. a Gaussian blur (MNIST-C's "glass/motion blur" family, here isotropic) with
   ``sigma`` in ``[0, max_blur]`` pixels;
3. a contrast reduction (MNIST-C has none; it is ImageNet-C's ``contrast``):
   ``x <- (x - mean(x)) * c + mean(x)`` with ``c`` in ``[min_contrast, 1]``;
4. additive Gaussian noise (MNIST-C's ``shot/impulse noise`` family) with standard
   deviation ``n`` in ``[0, max_noise]``, then clipped to ``[0, 1]``.

Shapes: images ``(N, H, W)`` uint8 in, ``(N, H, W)`` uint8 out (the file format of the
torchvision sets, so the same normalisation code applies). The parameters are drawn for
all ``N`` images at once in a fixed order, so image ``i`` gets the same corruption
whatever split it lands in.

>>> x = np.zeros((2, 28, 28), np.uint8); x[:, 10:18, 12:16] = 255
>>> y = corrupt_images(x, seed=0)
>>> y.shape, y.dtype, bool((y == corrupt_images(x, seed=0)).all()), bool((y != x).any())
((2, 28, 28), dtype('uint8'), True, True)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CORRUPTION", "corrupt_images"]

#: The strengths of the corruptions used for the ``"embedded-corrupt"`` data set.
CORRUPTION = dict(max_rotate=30.0, max_zoom=0.2, max_shift=3.0, max_blur=1.2,
                  min_contrast=0.3, max_noise=0.35)


def _affine(x: torch.Tensor, gen: torch.Generator, max_rotate: float, max_zoom: float,
            max_shift: float) -> torch.Tensor:
    """Rotate, zoom and shift each image (N, 1, H, W) by its own seeded amount."""
    n, _, h, w = x.shape
    u = torch.rand(4, n, generator=gen, dtype=torch.float64) * 2 - 1   # uniform in [-1, 1]
    angle = u[0] * math.radians(max_rotate)
    zoom = 1 + u[1] * max_zoom
    # affine_grid maps output to input coordinates in [-1, 1]: the inverse transform
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    tx, ty = u[2] * max_shift * 2 / w, u[3] * max_shift * 2 / h
    theta = torch.stack([torch.stack([cos, -sin, -tx], 1), torch.stack([sin, cos, -ty], 1)], 1)
    grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(x: torch.Tensor, gen: torch.Generator, max_blur: float) -> torch.Tensor:
    """Blur each image (N, 1, H, W) with its own Gaussian, sigma uniform in [0, max_blur]."""
    n = x.shape[0]
    sigma = torch.rand(n, generator=gen, dtype=torch.float64) * max_blur
    r = 3
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k1 = torch.exp(-t.view(1, -1) ** 2 / (2 * sigma.clamp_min(1e-3).view(-1, 1) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)                                   # (N, 2r+1)
    k2 = (k1.view(n, -1, 1) * k1.view(n, 1, -1)).float().unsqueeze(1)  # (N, 1, k, k)
    out = F.conv2d(F.pad(x.view(1, n, *x.shape[2:]), (r,) * 4), k2, groups=n)
    return out.view_as(x)


def corrupt_images(images: np.ndarray, seed: int = 0, **strengths: float) -> np.ndarray:
    """Corrupt uint8 images (N, H, W) with seeded affine, blur, contrast and noise.

    ``strengths`` override entries of :data:`CORRUPTION` (all ``0`` and ``min_contrast=1``
    leave the images as they are, up to rounding). Same ``seed``, same output.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 of shape (N, H, W), got {images.dtype} "
                         f"{images.shape}")
    unknown = set(strengths) - set(CORRUPTION)
    if unknown:
        raise ValueError(f"unknown corruption {sorted(unknown)}; allowed: {sorted(CORRUPTION)}")
    p = {**CORRUPTION, **strengths}
    if not 0 <= p["min_contrast"] <= 1 or min(p[k] for k in p if k != "min_contrast") < 0:
        raise ValueError(f"corruption strengths must be >= 0 and min_contrast in [0, 1], got {p}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
    x = _affine(x, gen, p["max_rotate"], p["max_zoom"], p["max_shift"])
    x = _blur(x, gen, p["max_blur"])
    c = (p["min_contrast"] + torch.rand(len(x), generator=gen) * (1 - p["min_contrast"]))
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * c.view(-1, 1, 1, 1) + mean
    noise = torch.rand(len(x), generator=gen).view(-1, 1, 1, 1) * p["max_noise"]
    x = x + noise * torch.randn(x.shape, generator=gen)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
