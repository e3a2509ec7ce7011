#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures for the ops and models (tests/fixtures/torch/*.safetensors).

Each file holds inputs, weights, outputs and gradients of `loss = sum(y * g)` for a random
upstream gradient `g` (or of the model's loss), so the Rust tests can compare without Python.
Single ops are float32; whole models (a tiny UNet3D, one DenseNet dense block) are float64.

    python scripts/make_fixtures.py      # needs torch, torchvision, safetensors
"""
import os
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from torch_unet import UNet3D, dice_loss

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torch")
torch.manual_seed(0)


def save(name, tensors):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name + ".safetensors")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path)
    print(f"{path}: {sum(v.numel() for v in tensors.values())} values")


def with_ties(shape, dtype=torch.float32):
    """Random values where about half the entries are exactly 0 (as after a ReLU)."""
    x = torch.randn(shape, dtype=dtype)
    return torch.relu(x)


def grads_of(y, *leaves):
    g = torch.randn_like(y)
    (y * g).sum().backward()
    return g, [l.grad for l in leaves]


def conv3d_case(name, n, c, o, size, k, p, s, bias=True):
    x = torch.randn((n, c) + size, requires_grad=True)
    w = (torch.randn((o, c) + (k,) * 3) * 0.3).requires_grad_()
    b = torch.randn(o, requires_grad=True)
    y = F.conv3d(x, w, b if bias else None, stride=s, padding=p)
    g, (dx, dw, db) = grads_of(y, x, w, b)
    t = dict(x=x, w=w, y=y, g=g, dx=dx, dw=dw)
    if bias:
        t.update(b=b, db=db)
    save(name, t)


def conv2d_case(name, n, c, o, size, k, p, s):
    x = torch.randn((n, c) + size, requires_grad=True)
    w = (torch.randn((o, c, k, k)) * 0.3).requires_grad_()
    y = F.conv2d(x, w, None, stride=s, padding=p)
    g, (dx, dw) = grads_of(y, x, w)
    save(name, dict(x=x, w=w, y=y, g=g, dx=dx, dw=dw))


def ops():
    conv3d_case("conv3d_k3", 2, 3, 4, (6, 7, 5), 3, 1, 1)
    conv3d_case("conv3d_k3_s2_odd", 1, 2, 3, (7, 6, 9), 3, 1, 2)
    conv3d_case("conv3d_k1", 2, 5, 3, (4, 3, 5), 1, 0, 1)
    conv3d_case("conv3d_k3_p0", 1, 4, 2, (5, 6, 7), 3, 0, 1, bias=False)
    conv2d_case("conv2d_k7_s2", 1, 3, 4, (11, 13), 7, 3, 2)
    conv2d_case("conv2d_k3", 2, 4, 5, (6, 9), 3, 1, 1)

    x = torch.randn(2, 4, 3, 4, 5, requires_grad=True)
    w = (torch.randn(4, 3, 2, 2, 2) * 0.3).requires_grad_()
    b = torch.randn(3, requires_grad=True)
    y = F.conv_transpose3d(x, w, b, stride=2)
    g, (dx, dw, db) = grads_of(y, x, w, b)
    save("conv_transpose3d", dict(x=x, w=w, b=b, y=y, g=g, dx=dx, dw=dw, db=db))

    # Max pooling with ties (ReLU zeros, and a constant block) and an odd size (floor).
    x = with_ties((2, 3, 6, 5, 7))
    x[0, 0, :2, :2, :2] = 0.7
    x.requires_grad_()
    y = F.max_pool3d(x, 2)
    g, (dx,) = grads_of(y, x)
    save("max_pool3d_ties", dict(x=x, y=y, g=g, dx=dx))

    x = torch.randn(2, 3, 5, 6, 7, requires_grad=True)
    y = F.avg_pool3d(x, 2)
    g, (dx,) = grads_of(y, x)
    save("avg_pool3d", dict(x=x, y=y, g=g, dx=dx))

    x = with_ties((2, 3, 9, 8)).requires_grad_()
    y = F.max_pool2d(x, 3, stride=2, padding=1)
    g, (dx,) = grads_of(y, x)
    save("max_pool2d_k3_s2_p1", dict(x=x, y=y, g=g, dx=dx))

    x = torch.randn(2, 3, 6, 8, requires_grad=True)
    y = F.avg_pool2d(x, 2)
    g, (dx,) = grads_of(y, x)
    save("avg_pool2d", dict(x=x, y=y, g=g, dx=dx))

    x = torch.randn(2, 3, 3, 4, 2, requires_grad=True)
    y = F.interpolate(x, scale_factor=2, mode="nearest")
    g, (dx,) = grads_of(y, x)
    save("upsample_nearest3d", dict(x=x, y=y, g=g, dx=dx))

    x = with_ties((2, 4, 3, 4, 5))
    x[1, 2] = 0.0  # a channel where every element ties
    x.requires_grad_()
    y = F.adaptive_max_pool3d(x, 1).flatten(1)
    g, (dx,) = grads_of(y, x)
    ya = F.adaptive_avg_pool3d(x, 1).flatten(1)
    save("global_pool3d", dict(x=x, y_max=y, g=g, dx_max=dx, y_avg=ya))

    bn = nn.BatchNorm3d(4, eps=1e-3, momentum=0.01)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(4))
        bn.bias.copy_(torch.randn(4))
    x = (torch.randn(2, 4, 3, 5, 4) * 2 + 1).requires_grad_()
    y = bn(x)
    g, (dx, dgamma, dbeta) = grads_of(y, x, bn.weight, bn.bias)
    bn.eval()
    x2 = torch.randn(2, 4, 3, 5, 4)
    y_eval = bn(x2)
    save("batch_norm3d", dict(x=x, weight=bn.weight, bias=bn.bias, y=y, g=g, dx=dx, dweight=dgamma,
                               dbias=dbeta, running_mean=bn.running_mean, running_var=bn.running_var,
                               x_eval=x2, y_eval=y_eval))

    gru = nn.GRU(5, 4, batch_first=True)
    x = torch.randn(3, 6, 5, requires_grad=True)
    out, h = gru(x)
    g, (dx,) = grads_of(h[0], x)
    t = {k: v for k, v in gru.state_dict().items()}
    t.update(x=x, h=h[0], g=g, dx=dx)
    t.update({"d" + k: p.grad for k, p in gru.named_parameters()})
    save("gru", t)


# ---- Models (float64) ----

def models():
    torch.set_default_dtype(torch.float64)
    full = UNet3D(1, 16, 4, 3)
    n_params = sum(p.numel() for p in full.parameters() if p.requires_grad)
    print("UNet3D(16) trainable parameters:", n_params)
    assert n_params == 5647891, n_params

    torch.manual_seed(1)
    net = UNet3D(1, 2, 2, 3)
    x = torch.relu(torch.randn(2, 1, 8, 8, 8))  # zeros make pooling ties
    labels = torch.randint(0, 3, (2, 8, 8, 8))
    y = F.one_hot(labels, 3).permute(0, 4, 1, 2, 3).double()
    p = torch.softmax(net(x), 1)
    loss = dice_loss(p, y)
    loss.backward()
    t = {k: v for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
    t = {"param." + k: v for k, v in t.items()}
    t.update({"grad." + k: v.grad for k, v in net.named_parameters()})
    t.update(x=x, labels=labels.to(torch.uint8), probs=p, loss=loss.reshape(1))
    # The initial state (before the forward pass updated the running statistics).
    torch.manual_seed(1)
    init = UNet3D(1, 2, 2, 3).state_dict()
    t.update({"init." + k: v for k, v in init.items() if "num_batches_tracked" not in k})
    save("unet3d_tiny_f64", t)

    # One DenseNet dense block, torchvision's own (norm1/relu1/conv1/norm2/relu2/conv2).
    from torchvision.models.densenet import _DenseBlock
    torch.manual_seed(2)
    block = _DenseBlock(num_layers=2, num_input_features=3, bn_size=2, growth_rate=4, drop_rate=0)
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    out = block(x)
    g, (dx,) = grads_of(out, x)
    t = {"param." + k: v for k, v in block.state_dict().items() if "num_batches_tracked" not in k}
    t.update({"grad." + k: v.grad for k, v in block.named_parameters()})
    t.update(x=x, y=out, g=g, dx=dx)
    save("dense_block_f64", t)

    # torchvision's DenseNet-121 parameter names and shapes, for the 1:1 weight mapping.
    import json
    import torchvision
    net = torchvision.models.densenet121(weights=None)
    keys = {k: list(v.shape) for k, v in net.state_dict().items()
            if k.startswith("features.") and "num_batches_tracked" not in k}
    with open(os.path.join(OUT, "densenet121_features.json"), "w") as fh:
        json.dump({"trainable": sum(p.numel() for p in net.features.parameters()), "tensors": keys}, fh, indent=0)


if __name__ == "__main__":
    ops()
    models()
