#!/usr/bin/env python3
"""PyTorch reference for `pretext bench models`: UNet3D training steps (forward, softmax, O's
Dice loss, backward, Adam), batch 2, and DenseNet training steps (torchvision's DenseNet with a
5-class linear head, cross-entropy, Adam) at the quick profile's shape (growth 8, blocks 2/4/4,
init 16, bn 2; 16x3x96^2) and DenseNet-121's (8x3x224^2); median of timed steps after a warm-up.
Each row also has its first step's time and its peak resident memory (reset before the row).
Prints the same JSON rows as `pretext bench models --json`.

    python scripts/bench_torch.py --sizes 32,64 [--model unet|densenet|all] [--device cuda]
        [--threads 2] [--tf32|--bf16]
"""
import argparse
import json
import resource
import statistics
import time

import torch

from torch_unet import UNet3D, dice_loss


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# (shape name after the batch, batch, image size, growth, blocks, init features, bn size): as
# src/bench.rs; the row's name is "<batch>x<name>".
DENSENETS = [
    ("3x96^2 g8 b2-4-4 i16 bn2", 16, 96, 8, (2, 4, 4), 16, 2),
    ("3x224^2 densenet121", 8, 224, 32, (6, 12, 24, 16), 64, 4),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="32,64")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--dense-batch", type=int, default=None,
                    help="images per batch of the DenseNet rows (default: 16 quick, 8 DenseNet-121)")
    ap.add_argument("--filters", type=int, default=16)
    ap.add_argument("--model", default="all", choices=["unet", "densenet", "densenet-quick", "densenet121", "all"])
    ap.add_argument("--forward-only", action="store_true", help="(ignored; pretext's flag)")
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

    def cpu_ms():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return (r.ru_utime + r.ru_stime) * 1e3

    cpu_of = {}

    def timed(f, warmup=None, reps=None):
        for _ in range(a.warmup if warmup is None else warmup):
            f()
        sync()
        ts, cs = [], []
        for _ in range(a.reps if reps is None else reps):
            t0, c0 = time.perf_counter(), cpu_ms()
            f()
            sync()
            ts.append((time.perf_counter() - t0) * 1e3)
            cs.append(cpu_ms() - c0)
        cpu_of[f] = statistics.median(cs)
        return statistics.median(ts)

    sizes = [int(v) for v in a.sizes.split(",")] if a.model in ("unet", "all") else []
    for s in sizes:
        reset_peak_rss()
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

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        first = timed(step, 0, 1)
        fwd = timed(forward)
        st = timed(step)
        row = dict(op="unet3d_step", shape=f"{a.batch}x1x{s}^3 f{a.filters}", fwd_ms=fwd, fwd_bwd_ms=st,
                   gflops=None, peak_rss_mib=peak_rss_mib(), first_ms=first, cpu_ms=cpu_of[step],
                   threads=torch.get_num_threads())
        if cuda:
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        print(json.dumps(row), flush=True)

    wanted = {"unet": [], "densenet-quick": DENSENETS[:1], "densenet121": DENSENETS[1:]}.get(a.model, DENSENETS)
    for name, batch, size, growth, blocks, init, bn in wanted:
        batch = a.dense_batch or batch
        name = f"{batch}x{name}"
        import torchvision

        reset_peak_rss()
        torch.manual_seed(0)
        net = torchvision.models.DenseNet(growth_rate=growth, block_config=blocks, num_init_features=init,
                                          bn_size=bn, num_classes=5).to(dev).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, eps=1e-7)
        x = torch.rand(batch, 3, size, size, device=dev)
        y = (torch.arange(batch) % 5).to(dev)

        def dforward():
            return net(x)

        def dstep():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(dforward(), y).backward()
            opt.step()

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        first = timed(dstep, 0, 1)
        fwd = timed(dforward)
        st = timed(dstep)
        row = dict(op="densenet_step", shape=name, fwd_ms=fwd, fwd_bwd_ms=st, gflops=None,
                   peak_rss_mib=peak_rss_mib(), first_ms=first, cpu_ms=cpu_of[dstep],
                   threads=torch.get_num_threads())
        if cuda:
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
