"""jaxlrp._image against OpenCV (cv2.GaussianBlur, cv2.resize) and torch's bilinear upsampling."""

from __future__ import annotations

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxlrp import _image as image

pytestmark = pytest.mark.crosscheck

# float32 on both sides. cv2 and our separable blur/resize compute the same weighted sums
# in a different order; values are O(1), so rounding differences are a few ulps (~1e-7).
# The brief's bound for the blur is 1e-5; the same bound is used for resize. Measured
# (printed with -s): blur max|diff| 6.0e-8 to 1.2e-7, cv2 resize 6.0e-8 to 4.8e-7,
# align_corners resize vs torch 3.0e-7 to 1.7e-6 (6x below the bound).
ATOL = 1e-5

SHAPES = [(64, 64), (7, 7), (224, 224), (5, 13), (2, 9), (1, 6), (3, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_blur_matches_cv2_gaussian_blur(shape):
    rng = np.random.default_rng(sum(shape))
    m = rng.random((3,) + shape).astype(np.float32)
    ref = np.stack([cv2.GaussianBlur(a, (5, 5), 4) for a in m])
    out = np.asarray(image.gaussian_blur(jnp.asarray(m), 5, 4.0))
    err = np.abs(out - ref).max()
    print(f"[image-cv2] GaussianBlur (5,5) sigma 4 on {shape}: max|diff| = {err:.2e}")
    assert err <= ATOL


@pytest.mark.parametrize(
    "ksize,sigma", [(3, 0.8), (7, 2.0), (5, 0.0), (9, 0.0), (11, 0.0), ((3, 7), (1.0, 3.0))]
)
def test_blur_other_kernels_match_cv2(ksize, sigma):
    m = np.random.default_rng(0).standard_normal((20, 17)).astype(np.float32)
    if isinstance(ksize, tuple):  # ours: (kh, kw), (sigma_h, sigma_w); cv2: (kw, kh), sX, sY
        ref = cv2.GaussianBlur(m, ksize[::-1], sigmaX=sigma[1], sigmaY=sigma[0])
    else:
        ref = cv2.GaussianBlur(m, (ksize, ksize), sigma)
    out = np.asarray(image.gaussian_blur(jnp.asarray(m), ksize, sigma))
    assert np.abs(out - ref).max() <= ATOL
    for k, sg in [(7, 2.0), (5, 4.0), (5, 0.0), (7, 0.0), (9, 0.0), (11, 0.0), (15, 0), (3, -1.0)]:
        np.testing.assert_allclose(
            image.gaussian_kernel(k, sg), cv2.getGaussianKernel(k, sg)[:, 0], rtol=1e-6
        )


@pytest.mark.parametrize(
    "src,dst", [((7, 7), (224, 224)), ((16, 16), (64, 64)), ((5, 9), (13, 4)),
                ((64, 64), (7, 9)), ((3, 3), (3, 8)), ((1, 4), (6, 6))]
)
def test_resize_matches_cv2_resize(src, dst):
    m = np.random.default_rng(1).standard_normal((2,) + src).astype(np.float32)
    ref = np.stack([cv2.resize(a, dst[::-1], interpolation=cv2.INTER_LINEAR) for a in m])
    ref = ref.reshape((2,) + dst)  # cv2 drops singleton axes
    out = np.asarray(image.resize(jnp.asarray(m), dst))
    err = np.abs(out - ref).max()
    print(f"[image-cv2] resize {src}->{dst}: max|diff| = {err:.2e}")
    assert err <= ATOL


@pytest.mark.parametrize("src,dst", [((7, 7), (224, 224)), ((8, 8), (64, 64)), ((3, 5), (9, 4))])
def test_align_corners_resize_matches_torch_upsampling_bilinear(src, dst):
    m = np.random.default_rng(2).standard_normal((2, 3) + src).astype(np.float32)
    ref = torch.nn.UpsamplingBilinear2d(size=dst)(torch.from_numpy(m)).numpy()
    out = np.asarray(image.resize(jnp.asarray(m), dst, align_corners=True))
    err = np.abs(out - ref).max()
    print(f"[image-cv2] align_corners resize {src}->{dst} vs torch: max|diff| = {err:.2e}")
    assert err <= ATOL
