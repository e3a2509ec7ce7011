#!/usr/bin/env python3
"""Writes what MONAI's sliding_window_inference makes of a few volumes and settings
(tests/fixtures/infer/sliding_window.safetensors), for tests/predict.rs.

The predictor depends on the voxel's position inside its window, so the windows' placement,
order, padding and blending weights all show in the result:

    out[:, 0] = x * (1 + 0.1 * d) + 0.05 * h        (d, h, w: indices inside the window)
    out[:, 1] = x * x - 0.02 * w

    pip install --target /tmp/monai monai==1.6.1 --no-deps   # pure Python; needs torch, numpy
    PYTHONPATH=/tmp/monai python scripts/make_sliding_window_fixtures.py

Each case `NAME` stores `NAME.x` (input [N, C, D, H, W]), `NAME.y` (MONAI's output) and
`NAME.cfg` (roi d, h, w, overlap, gaussian 0/1, sigma_scale, sw_batch_size) as float64.
"""
import os

import torch
from monai.inferers import sliding_window_inference
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "infer")


def predictor(x):
    d, h, w = x.shape[2:]
    dd = torch.arange(d, dtype=x.dtype).view(1, 1, d, 1, 1)
    hh = torch.arange(h, dtype=x.dtype).view(1, 1, 1, h, 1)
    ww = torch.arange(w, dtype=x.dtype).view(1, 1, 1, 1, w)
    c0 = x[:, :1] * (1 + 0.1 * dd) + 0.05 * hh
    c1 = x[:, :1] * x[:, :1] - 0.02 * ww
    return torch.cat([c0, c1], dim=1)


CASES = [
    # name, input shape, roi, overlap, mode, sigma_scale, sw_batch_size
    ("gaussian_half", (1, 1, 20, 17, 13), (8, 8, 8), 0.5, "gaussian", 0.125, 1),
    ("constant_quarter", (1, 1, 20, 17, 13), (8, 6, 5), 0.25, "constant", 0.125, 1),
    ("padded", (2, 1, 10, 9, 21), (16, 8, 12), 0.3, "gaussian", 0.2, 3),
    ("one_window", (1, 1, 12, 12, 12), (12, 12, 12), 0.5, "gaussian", 0.125, 1),
]


def main():
    torch.manual_seed(0)
    tensors = {}
    for name, shape, roi, overlap, mode, sigma, bs in CASES:
        x = torch.rand(shape, dtype=torch.float32)
        y = sliding_window_inference(
            x, roi, bs, predictor, overlap=overlap, mode=mode, sigma_scale=sigma
        )
        tensors[f"{name}.x"] = x
        tensors[f"{name}.y"] = y.contiguous()
        tensors[f"{name}.cfg"] = torch.tensor(
            [*roi, overlap, 1.0 if mode == "gaussian" else 0.0, sigma, bs], dtype=torch.float64
        )
        print(f"{name}: {tuple(x.shape)} -> {tuple(y.shape)}")
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "sliding_window.safetensors")
    save_file(tensors, path)
    print(path)


if __name__ == "__main__":
    main()
