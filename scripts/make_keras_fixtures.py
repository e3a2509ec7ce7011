#!/usr/bin/env python3
"""Reference fixture for the DenseNet under Keras' constants (issue 14 item 6):
tests/fixtures/torch/densenet_keras_f64.safetensors.

O builds its 2D encoder with `tf.keras.applications.DenseNet121` (TF 2.1, keras-applications
1.0.8): every BatchNormalization has `epsilon=1.001e-5` and Keras' default `momentum=0.99`,
every Conv2D Keras' default `glorot_uniform` kernel. In TF 2.1 a BatchNormalization on a 4-D
input runs the fused kernel (`tensorflow/python/keras/layers/normalization.py`: `fused` is
`ndims == 4`, `_bessels_correction_test_only = True`), whose batch variance carries Bessel's
correction (`fused_batch_norm_op.cc`: `rest_size_adjust = rest_size / (rest_size - 1)`), and
`_assign_moving_average` does `moving -= (moving - value) * (1 - momentum)`. So:

    y       = (x - mean) / sqrt(var + eps) * gamma + beta      (var: biased, over N, H, W)
    moving_mean -= (moving_mean - mean) * 0.01
    moving_var  -= (moving_var - var * n / (n - 1)) * 0.01      (n = N * H * W)

`keras_batch_norm_train` below is that transcription in NumPy; it is checked here against
`torch.nn.BatchNorm2d(eps=1.001e-5, momentum=0.01)` (the same rule in PyTorch's convention),
and, where TensorFlow 2.x with Keras 2 is importable, against `tf.keras.layers.
BatchNormalization(momentum=0.99, epsilon=1.001e-5)` itself (float32). The fixture holds:

- `bn.*`: one BatchNorm of 5 channels over 4 training steps on 3x5x4x7 inputs whose channels
  have standard deviations from 0.002 to 2 (so that eps matters): each step's output and
  running statistics (the NumPy transcription), and the inference output on the final ones;
- `block.*`: torchvision's `_DenseBlock` (3 layers, 5 input channels, growth 3, bn_size 2) with
  Keras' constants on 2x5x5x7 inputs: output and gradients of `sum(y * g)` on the first step,
  running statistics after three training steps, inference output after them;
- `net.*`: a reduced torchvision DenseNet (growth 4, blocks 2-2, 8 initial features, bn_size 2)
  with Keras' constants, random BatchNorm parameters and statistics, on 2x3x32x32: features in
  inference mode, in training mode, and the running statistics after that training pass.

    /work/venv-torch/bin/python scripts/make_keras_fixtures.py   # torch, torchvision, numpy, safetensors
"""
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torch")
EPS = 1.001e-5
KERAS_MOMENTUM = 0.99


def keras_batch_norm_train(x, gamma, beta, moving_mean, moving_var, eps=EPS, momentum=KERAS_MOMENTUM):
    """TF 2.1 Keras BatchNormalization, fused path, training=True, on x [N, C, H, W]: the output
    and the updated (moving_mean, moving_var)."""
    axes = (0, 2, 3)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=axes)
    var = ((x - mean[None, :, None, None]) ** 2).mean(axis=axes)
    y = (x - mean[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]
    y = y * gamma[None, :, None, None] + beta[None, :, None, None]
    var_out = var * (n / (n - 1))  # the fused kernel's Bessel's correction
    decay = 1.0 - momentum
    moving_mean = moving_mean - (moving_mean - mean) * decay
    moving_var = moving_var - (moving_var - var_out) * decay
    return y, moving_mean, moving_var


def keras_batch_norm_eval(x, gamma, beta, moving_mean, moving_var, eps=EPS):
    c = lambda v: v[None, :, None, None]
    return (x - c(moving_mean)) / np.sqrt(c(moving_var) + eps) * c(gamma) + c(beta)


def keras_constants(module):
    """Every BatchNorm2d of `module` with Keras' epsilon and momentum (PyTorch's convention)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = EPS
            m.momentum = 1.0 - KERAS_MOMENTUM
    return module


def randomise_norms(module, gen):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) + 0.5)


def save(name, tensors):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name + ".safetensors")
    t = {k: torch.as_tensor(v).detach().to(torch.float64).contiguous() for k, v in tensors.items()}
    save_file(t, path)
    print(f"{path}: {sum(v.numel() for v in t.values())} values, {os.path.getsize(path)} bytes")


def batch_norm_case(rng):
    c, steps = 5, 4
    gamma = rng.uniform(0.5, 1.5, c)
    beta = rng.normal(0.0, 0.2, c)
    std = np.array([0.002, 0.01, 0.1, 1.0, 2.0])
    offset = rng.normal(0.0, 1.0, c)
    xs = [rng.standard_normal((3, c, 4, 7)) * std[None, :, None, None] + offset[None, :, None, None]
          for _ in range(steps)]
    mm, mv = np.zeros(c), np.ones(c)
    torch_bn = nn.BatchNorm2d(c, eps=EPS, momentum=1.0 - KERAS_MOMENTUM).double()
    with torch.no_grad():
        torch_bn.weight.copy_(torch.tensor(gamma))
        torch_bn.bias.copy_(torch.tensor(beta))
    torch_bn.train()
    t = {"bn.gamma": gamma, "bn.beta": beta}
    for k, x in enumerate(xs):
        y, mm, mv = keras_batch_norm_train(x, gamma, beta, mm, mv)
        with torch.no_grad():
            yt = torch_bn(torch.tensor(x)).numpy()
        err = max(np.abs(y - yt).max(), np.abs(mm - torch_bn.running_mean.numpy()).max(),
                  np.abs(mv - torch_bn.running_var.numpy()).max())
        assert err < 1e-12, (k, err)
        t.update({f"bn.x{k}": x, f"bn.y{k}": y, f"bn.mean{k}": mm, f"bn.var{k}": mv})
    t["bn.y_eval"] = keras_batch_norm_eval(xs[0], gamma, beta, mm, mv)
    # The fixture tells the constants apart: PyTorch's (eps 1e-5, momentum 0.1) and a biased
    # running variance give other numbers.
    y_torch, _, _ = keras_batch_norm_train(xs[0], gamma, beta, np.zeros(c), np.ones(c), eps=1e-5)
    _, _, v_torch = keras_batch_norm_train(xs[0], gamma, beta, np.zeros(c), np.ones(c), momentum=0.9)
    n = 3 * 4 * 7
    biased = 1.0 - 0.01 + 0.01 * (xs[0].var(axis=(0, 2, 3)))
    print("bn: |y(eps 1e-5) - y| max", np.abs(y_torch - t["bn.y0"]).max(),
          "| var(momentum 0.1) - var| max", np.abs(v_torch - t["bn.var0"]).max(),
          "| biased var - var| max", np.abs(biased - t["bn.var0"]).max(), "n", n)
    return t


def dense_block_case():
    from torchvision.models.densenet import _DenseBlock
    gen = torch.Generator().manual_seed(14)
    torch.manual_seed(14)
    block = keras_constants(_DenseBlock(num_layers=3, num_input_features=5, bn_size=2, growth_rate=3,
                                        drop_rate=0)).double()
    randomise_norms(block, gen)
    state = {k: v.clone() for k, v in block.state_dict().items() if "num_batches_tracked" not in k}
    scale = torch.tensor([0.003, 0.03, 0.3, 1.0, 3.0], dtype=torch.float64)[None, :, None, None]
    xs = [torch.randn(2, 5, 5, 7, generator=gen, dtype=torch.float64) * scale for _ in range(3)]
    block.train()
    x0 = xs[0].clone().requires_grad_()
    y = block(x0)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y * g).sum().backward()
    t = {"block.param." + k: v for k, v in state.items()}
    t.update({"block.grad." + k: p.grad for k, p in block.named_parameters()})
    t.update({"block.y": y, "block.g": g, "block.dx": x0.grad})
    with torch.no_grad():
        for k, x in enumerate(xs):
            t[f"block.x{k}"] = x
            if k > 0:
                block(x)
        t.update({"block.after." + k: v for k, v in block.state_dict().items() if "running" in k})
        block.eval()
        t["block.y_eval"] = block(xs[0])
    return t


def densenet_case():
    from torchvision.models.densenet import DenseNet
    gen = torch.Generator().manual_seed(15)
    torch.manual_seed(15)
    net = keras_constants(DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2)).double()
    randomise_norms(net, gen)
    state = {k: v.clone() for k, v in net.features.state_dict().items() if "num_batches_tracked" not in k}
    x = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64) * 0.05
    t = {"net.param.features." + k: v for k, v in state.items()}
    with torch.no_grad():
        net.eval()
        t["net.features_eval"] = F.relu(net.features(x))
        net.train()
        t["net.features_train"] = F.relu(net.features(x))
    t.update({"net.after.features." + k: v for k, v in net.features.state_dict().items() if "running" in k})
    t["net.x"] = x
    return t


def check_against_tensorflow(rng):
    """The transcription against Keras 2's own layer, when TensorFlow (2.x, Keras 2) is there."""
    try:
        import tensorflow as tf
    except ImportError:
        print("tensorflow not importable: the Keras layer itself is not compared")
        return
    c = 5
    layer = tf.keras.layers.BatchNormalization(axis=1, momentum=KERAS_MOMENTUM, epsilon=EPS)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(0.0, 0.2, c)
    layer.build((None, c, 4, 7))
    layer.gamma.assign(gamma.astype(np.float32))
    layer.beta.assign(beta.astype(np.float32))
    mm, mv = np.zeros(c), np.ones(c)
    for k in range(4):
        x = (rng.standard_normal((3, c, 4, 7)) * 2.0 + 0.5).astype(np.float32)
        y_tf = layer(tf.constant(x), training=True).numpy()
        y, mm, mv = keras_batch_norm_train(x.astype(np.float64), gamma.astype(np.float32).astype(np.float64),
                                           beta.astype(np.float32).astype(np.float64), mm, mv)
        err = (np.abs(y_tf - y).max(), np.abs(layer.moving_mean.numpy() - mm).max(),
               np.abs(layer.moving_variance.numpy() - mv).max())
        print(f"tensorflow {tf.__version__} (fused: {layer.fused}) step {k}: max |y|, |mean|, |var| diff {err}")
        assert max(err) < 1e-5, err


if __name__ == "__main__":
    rng = np.random.default_rng(6)
    t = batch_norm_case(rng)
    t.update(dense_block_case())
    t.update(densenet_case())
    save("densenet_keras_f64", t)
    check_against_tensorflow(np.random.default_rng(7))
