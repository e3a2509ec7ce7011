#!/usr/bin/env python3
"""NumPy/SciPy reference for `pretext bench pretext`: the pretext samplers the way the
original code builds a batch (O: sst/preprocessing/preprocess_{rotation,jigsaw,rpl,exemplar,
cpc}.py), at O's batch sizes on in-memory float32 volumes. Prints the same JSON rows
(`fwd_ms` = milliseconds to build one batch).

    python scripts/bench_pretext_ref.py --sizes 128 [--reps 3]
"""
import argparse
import json
import statistics
import time

import numpy as np
from scipy import ndimage

ROT = [
    lambda v: v,
    lambda v: np.transpose(np.flip(v, 1), (1, 0, 2)),
    lambda v: np.flip(v, (0, 1)),
    lambda v: np.flip(np.transpose(v, (1, 0, 2)), 1),
    lambda v: np.transpose(np.flip(v, 1), (0, 2, 1)),
    lambda v: np.flip(v, (1, 2)),
    lambda v: np.flip(np.transpose(v, (0, 2, 1)), 1),
    lambda v: np.transpose(np.flip(v, 0), (2, 1, 0)),
    lambda v: np.flip(v, (0, 2)),
    lambda v: np.flip(np.transpose(v, (2, 1, 0)), 0),
]


def crop_patches(v, n=3, jitter=3, rng=None):
    cell = v.shape[0] // n
    p = cell - jitter
    out = []
    for i in range(n):
        for j in range(n):
            for k in range(n):
                o = rng.integers(0, jitter + 1, 3)
                a, b, c = i * cell + o[0], j * cell + o[1], k * cell + o[2]
                out.append(v[a:a + p, b:b + p, c:c + p])
    return out


def rotation(vols, rng):
    return np.stack([ROT[rng.integers(10)](v) for v in vols]), None


def jigsaw(vols, rng, perms):
    xs = []
    for v in vols:
        patches = crop_patches(v, rng=rng)
        xs.append(np.stack([patches[t] for t in perms[rng.integers(len(perms))]]))
    return np.stack(xs), None


def rpl(vols, rng):
    xs = []
    for v in vols:
        patches = crop_patches(v, rng=rng)
        c = rng.integers(26)
        q = c if c < 13 else c + 1
        xs.append(np.stack([patches[13], patches[q]]))
    return np.stack(xs), None


def augment(v, rng):
    for ax in range(3):
        if rng.random() < 0.5:
            v = np.flip(v, ax)
    for axes in [(0, 1), (1, 2), (0, 2)]:
        if rng.random() < 0.5:
            if rng.random() < 0.5:
                v = np.rot90(v, rng.integers(4), axes)
            else:
                v = ndimage.rotate(v, rng.uniform(0, 360), axes=axes, reshape=False)
    if rng.random() < 0.5:
        v = v + rng.uniform(-0.125, 0.125)
        m = v.mean()
        v = (v - m) * rng.uniform(0.5, 1.5) + m
    if rng.random() < 0.15:
        z = ndimage.zoom(v, rng.uniform(0.8, 1.2, 3))
        s = v.shape[0]
        pad = [(max(0, (s - d) // 2), max(0, s - d - (s - d) // 2)) for d in z.shape]
        z = np.pad(z, pad)
        o = [rng.integers(0, d - s + 1) for d in z.shape]
        v = z[o[0]:o[0] + s, o[1]:o[1] + s, o[2]:o[2] + s]
    return np.ascontiguousarray(v)


def exemplar(vols, rng, pool):
    a = [augment(v, rng) for v in vols]
    n = []
    for _ in vols:
        w = pool[rng.integers(len(pool))]
        n.append((w - w.min()) / (w.max() - w.min()))
    return np.stack(a + list(vols) + n), None


def cpc(vols, rng):
    out = []
    for v in vols:
        s = v.shape[0]
        c = int(0.95 * s)
        o = rng.integers(0, s - c + 1, 3)
        v = v[o[0]:o[0] + c, o[1]:o[1] + c, o[2]:o[2] + c]
        b = (s - c) // 2
        v = np.pad(v, [(b, s - c - b)] * 3)
        p = s // 4
        inner = int(p * 7 / 8)
        for i in range(4):
            for j in range(4):
                for k in range(4):
                    x = v[i * p:(i + 1) * p, j * p:(j + 1) * p, k * p:(k + 1) * p]
                    if rng.random() < 0.5:
                        x = np.flip(x, 0)
                    q = rng.integers(0, p - inner + 1, 3)
                    x = x[q[0]:q[0] + inner, q[1]:q[1] + inner, q[2]:q[2] + inner]
                    d = (p - inner) // 2
                    out.append(np.pad(x, [(d, p - inner - d)] * 3))
    return np.stack(out), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="128")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="ignored (NumPy/SciPy run single-threaded here)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    perms = [rng.permutation(27) for _ in range(100)]
    for size in [int(s) for s in a.sizes.split(",")]:
        vols = [rng.random((size, size, size), dtype=np.float32) for _ in range(8)]
        tasks = [("rotation", 4, lambda b: rotation(b, rng)), ("jigsaw", 8, lambda b: jigsaw(b, rng, perms)),
                 ("rpl", 32, lambda b: rpl(b, rng)), ("exemplar", 2, lambda b: exemplar(b, rng, vols)),
                 ("cpc", 1, lambda b: cpc(b, rng))]
        for name, bs, f in tasks:
            batch = [vols[i % len(vols)] for i in range(bs)]
            for _ in range(a.warmup):
                f(batch)
            ts = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                f(batch)
                ts.append((time.perf_counter() - t0) * 1e3)
            print(json.dumps(dict(op=f"sample_{name}", shape=f"{bs}x1x{size}^3", fwd_ms=statistics.median(ts),
                                  fwd_bwd_ms=None)), flush=True)


if __name__ == "__main__":
    main()
