#!/usr/bin/env python3
"""Writes tests/fixtures/torch/ntxent.safetensors: SimCLR's NT-Xent loss computed by PyTorch on
a small fixed random batch of projections, the reference of stdlib/contrastive.rhai's nt_xent.

z [2N, D] holds two views of N items (rows i and i + N); the loss is, for each temperature,
the mean over the 2N rows of the cross-entropy of the cosine similarities / temperature (the
row's own similarity left out) against the partner row.

    /work/venv-torch/bin/python scripts/make_ntxent_fixture.py      # needs torch, safetensors
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torch")


def nt_xent(z, temperature):
    """NT-Xent as SimCLR writes it, in float64."""
    n2 = z.shape[0]
    u = F.normalize(z, dim=1)
    sim = u @ u.T / temperature
    sim = sim.masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    partners = (torch.arange(n2) + n2 // 2) % n2
    return F.cross_entropy(sim, partners)


def main():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g, dtype=torch.float32)
    temperatures = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    losses = torch.stack([nt_xent(z.double(), float(t)) for t in temperatures])
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "ntxent.safetensors")
    save_file({"z": z, "temperatures": temperatures, "losses": losses}, path)
    print("wrote", path, losses.tolist())


if __name__ == "__main__":
    main()
