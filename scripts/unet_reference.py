#!/usr/bin/env python3
"""An independent PyTorch reference of the paper's 3D UNet, written from the architecture
description alone (shared/docs/method.md §2.1: the authors' Keras `sst/models/unet3d.py`),
without reading pretext's Rust model or scripts/torch_unet.py. Writes
tests/fixtures/torch/unet_reference.safetensors for tests/nn_unet.rs.

What §2.1 specifies, and how it is read here:
- conv3d_block(f): Conv3D(f, 3^3, same, ReLU, bias) -> BatchNorm -> Dropout(0.5) ->
  Conv3D(f, 3^3, same, ReLU, bias) -> BatchNorm; conv -> ReLU -> BN (Keras `activation=`
  inside the convolution); Keras BatchNorm eps 1e-3, momentum 0.99 (torch momentum 0.01).
- Encoder: `depth` blocks of f, 2f, 4f, ... filters, each followed by MaxPool(2), the block
  output before pooling being the skip; a bottleneck block of f*2^depth filters; then one more
  MaxPool(2) (the encoder's output, which the pretext heads flatten).
- Decoder: UpSampling3D(2, nearest) undoing the extra pool; then per level, deepest first,
  Conv3DTranspose(f_level, 2, stride 2, with bias, no activation) -> concatenate with the skip
  -> conv3d_block(f_level) (dropout included); a final Conv3D(3, 1^3) whose softmax gives the
  probabilities. "concat(skip)" is read as Keras `concatenate([upsampled, skip])`, the
  transposed convolution's channels first (the spec does not say; see the test).
- Dropout is disabled (p = 0) for the train-mode comparison; eval mode uses the running
  statistics (randomised here so that eval is not near the identity).

Weights: torch's own default initialisation (not Keras' he_normal / glorot_uniform: the test
compares the function, not the initialiser), BatchNorm affine parameters and running
statistics randomised. Computed in float64 from float32 weights; outputs stored as float32.

    python scripts/unet_reference.py     # torch, safetensors
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torch")


class Block(nn.Module):
    """conv3d_block(f): conv -> ReLU -> BN -> dropout -> conv -> ReLU -> BN."""

    def __init__(self, c_in, f, dropout):
        super().__init__()
        self.conv_a = nn.Conv3d(c_in, f, 3, padding=1)
        self.bn_a = nn.BatchNorm3d(f, eps=1e-3, momentum=0.01)
        self.drop = nn.Dropout(dropout)
        self.conv_b = nn.Conv3d(f, f, 3, padding=1)
        self.bn_b = nn.BatchNorm3d(f, eps=1e-3, momentum=0.01)

    def forward(self, x):
        x = self.bn_a(F.relu(self.conv_a(x)))
        x = self.drop(x)
        return self.bn_b(F.relu(self.conv_b(x)))


class UNet(nn.Module):
    def __init__(self, c_in=1, filters=16, depth=4, classes=3, dropout=0.5):
        super().__init__()
        widths = [filters * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        c = c_in
        for f in widths:
            self.down.append(Block(c, f, dropout))
            c = f
        self.bottleneck = Block(c, filters * 2 ** depth, dropout)
        c = filters * 2 ** depth
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for f in reversed(widths):
            self.up.append(nn.ConvTranspose3d(c, f, 2, stride=2))
            self.up_blocks.append(Block(f + f, f, dropout))  # transposed conv output + skip
            c = f
        self.final = nn.Conv3d(c, classes, 1)

    def encode(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        x = self.bottleneck(x)
        return F.max_pool3d(x, 2), skips

    def forward(self, x):
        enc, skips = self.encode(x)
        x = F.interpolate(enc, scale_factor=2, mode="nearest")
        for up, block, skip in zip(self.up, self.up_blocks, reversed(skips)):
            x = block(torch.cat([up(x), skip], 1))
        return self.final(x)


def rust_name(k):
    """This reference's parameter names as pretext's UNet3d names them."""
    for a, b in (("down.", "encoder.down."), ("bottleneck.", "encoder.bottleneck."),
                 ("up_blocks.", "decoder.block."), ("up.", "decoder.up."),
                 ("final.", "decoder.head."), ("conv_a", "conv1"), ("bn_a", "bn1"),
                 ("conv_b", "conv2"), ("bn_b", "bn2")):
        for prefix in ("", "param.", "grad.", "after."):
            if k.startswith(prefix + a):
                k = prefix + b + k[len(prefix + a):]
                break
        else:
            k = k.replace("." + a, "." + b) if a.startswith(("conv_", "bn_")) else k
    return k


def main():
    torch.manual_seed(40)
    net = UNet(1, filters=2, depth=2, classes=3, dropout=0.0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.copy_(torch.rand_like(m.weight) + 0.5)
                m.bias.copy_(torch.randn_like(m.bias) * 0.2)
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.2)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    state = {k: v.clone() for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
    x = torch.randn(1, 1, 16, 16, 16)
    net = net.double()
    xd = x.double()
    t = {"param." + k: v for k, v in state.items()}
    net.eval()
    with torch.no_grad():
        t["logits_eval"] = net(xd).float()
        t["encoded_eval"] = net.encode(xd)[0].float()
    net.train()
    logits = net(xd)
    t["logits_train"] = logits.detach().float()
    loss = (logits ** 2).mean()
    loss.backward()
    t["loss_train"] = loss.detach().reshape(1)
    t.update({"grad." + k: p.grad for k, p in net.named_parameters()})
    t.update({"after." + k: v for k, v in net.state_dict().items() if "running" in k})
    t["x"] = x
    # pretext's parameter names (the only thing taken from the Rust model, after the
    # reference above was written).
    t = {rust_name(k): v for k, v in t.items()}
    print("parameters:", {rust_name(k): tuple(v.shape) for k, v in state.items()})
    path = os.path.join(OUT, "unet_reference.safetensors")
    save_file({k: v.detach().contiguous() for k, v in t.items()}, path)
    print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
