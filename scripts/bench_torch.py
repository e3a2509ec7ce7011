#!/usr/bin/env python3
"""PyTorch reference for `pretext bench models`: UNet3D training steps (forward, softmax, O's
Dice loss, backward, Adam), batch 2, median of timed steps after a warm-up. Prints the same
JSON rows as `pretext bench models --json`.

    python scripts/bench_torch.py --sizes 32,64 [--device cuda] [--threads 2] [--tf32|--bf16]
"""
import argparse
import json
import statistics
import time

import torch

from torch_unet import UNet3D, dice_loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="32,64")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--filters", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for s in [int(v) for v in a.sizes.split(",")]:
        torch.manual_seed(0)
        net = UNet3D(1, a.filters, 4, 3, dropout=0.5).to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, eps=1e-7)
        x = torch.rand(a.batch, 1, s, s, s, device=dev)
        y = torch.nn.functional.one_hot(torch.randint(0, 3, (a.batch, s, s, s), device=dev), 3)
        y = y.permute(0, 4, 1, 2, 3).float()

        def forward():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
                return net(x)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = dice_loss(torch.softmax(forward().float(), 1), y)
            loss.backward()
            opt.step()

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

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        fwd = timed(forward)
        st = timed(step)
        row = dict(op="unet3d_step", shape=f"{a.batch}x1x{s}^3 f{a.filters}", fwd_ms=fwd, fwd_bwd_ms=st,
                   gflops=None, threads=torch.get_num_threads())
        if cuda:
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
