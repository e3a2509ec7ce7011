#!/usr/bin/env python3
"""PyTorch reference for `pretext bench ops`: the UNet3D's convolutions and the other ops of a
block, forward and forward+backward (loss = sum of the output), batch 2. Prints the same JSON
rows as `pretext bench ops --json`.

    python scripts/bench_torch_ops.py --sizes 32,64 [--threads 2] [--device cuda]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


CONV2D = [
    (8, 3, 64, 224, 7, 3, 2),
    (16, 3, 16, 96, 7, 3, 2),
    (8, 256, 128, 56, 1, 0, 1),
    (8, 512, 128, 28, 1, 0, 1),
    (8, 1024, 128, 14, 1, 0, 1),
    (8, 128, 32, 56, 3, 1, 1),
    (8, 128, 32, 28, 3, 1, 1),
    (8, 128, 32, 14, 3, 1, 1),
    (8, 128, 32, 7, 3, 1, 1),
]


def unet_conv_shapes(size, depth=4, f=16):
    v = [(1, f, size), (f, f, size)]
    for level in range(1, depth + 1):
        s = size >> level
        if s >= 2:
            v.append((f << (level - 1), f << level, s))
            v.append((f << level, f << level, s))
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="32,64")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-conv2d", action="store_true", help="leave out the 2D convolution rows")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(f):
        for _ in range(a.warmup):
            f()
        sync()
        ts = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            f()
            sync()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    def row(op, shape, fn, x, flops=None):
        fwd = timed(lambda: fn(x))

        def fb():
            if x.grad is not None:
                x.grad = None
            fn(x).sum().backward()
        t = timed(fb)
        r = dict(op=op, shape=shape, fwd_ms=fwd, fwd_bwd_ms=t,
                 gflops=(3 * flops / (t * 1e6)) if flops else None, threads=torch.get_num_threads())
        print(json.dumps(r), flush=True)

    for size in [int(v) for v in a.sizes.split(",") if int(v) > 0]:
        for c, o, s in unet_conv_shapes(size):
            x = torch.randn(2, c, s, s, s, device=dev, requires_grad=True)
            w = (torch.randn(o, c, 3, 3, 3, device=dev) * 0.1).requires_grad_()
            row("conv3d", f"2x{c}x{s}^3 {c}->{o} k3", lambda t: F.conv3d(t, w, padding=1), x,
                2.0 * 2 * o * c * 27 * s ** 3)
        c, s = 16, size
        x = torch.randn(2, c, s, s, s, device=dev, requires_grad=True)
        row("max_pool3d", f"2x{c}x{s}^3", lambda t: F.max_pool3d(t, 2), x)
        xu = torch.randn(2, 2 * c, s // 2, s // 2, s // 2, device=dev, requires_grad=True)
        row("upsample_nearest3d", f"2x{2 * c}x{s // 2}^3", lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), xu)
        wt = (torch.randn(2 * c, c, 2, 2, 2, device=dev) * 0.1).requires_grad_()
        row("conv_transpose3d", f"2x{2 * c}x{s // 2}^3", lambda t: F.conv_transpose3d(t, wt, stride=2), xu)
        g = torch.ones(c, device=dev, requires_grad=True)
        b = torch.zeros(c, device=dev, requires_grad=True)
        row("batch_norm", f"2x{c}x{s}^3", lambda t: F.batch_norm(t, None, None, g, b, training=True, eps=1e-3), x)
        row("relu", f"2x{c}x{s}^3", torch.relu, x)
    # DenseNet's 2D convolutions (as src/bench.rs conv2d_shapes).
    for n, c, o, s, k, p, st in ([] if a.no_conv2d else CONV2D):
        x = torch.randn(n, c, s, s, device=dev, requires_grad=True)
        w = (torch.randn(o, c, k, k, device=dev) * 0.1).requires_grad_()
        so = (s + 2 * p - k) // st + 1
        row("conv2d", f"{n}x{c}x{s}^2 {c}->{o} k{k} s{st}",
            lambda t, w=w, p=p, st=st: F.conv2d(t, w, padding=p, stride=st), x, 2.0 * n * o * c * k * k * so * so)


if __name__ == "__main__":
    main()
