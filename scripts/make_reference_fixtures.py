#!/usr/bin/env python3
"""Reference fixtures for the kernels, layers, losses and the optimiser that had none
(tests/fixtures/torch/*.safetensors; issue 22):

- conv3d above the AVX-512 threshold (>= 512 positions, weight gradient >= 64 vectors of 16):
  "same" 3x3x3 convolutions on odd sizes with 1 and 17 input channels, output and both
  gradients (`conv3d_direct_*`);
- inference-mode BatchNorm3d on running statistics, and the fused bias + ReLU + BatchNorm
  inference path (`batch_norm3d_eval`);
- Adam with Keras' update and per-tensor clipping over several steps: a NumPy transcription of
  Keras' `Adam` (global iteration count, `lr_t = lr*sqrt(1-b2^t)/(1-b1^t)`,
  `var -= lr_t*m/(sqrt(v)+eps)`, clipnorm then clipvalue per tensor), cross-checked here against
  `torch.optim.Adam` whose eps is set every step to `eps/sqrt(1-b2^t)` (which makes the two
  updates identical) (`adam_keras`);
- cross-entropy, binary cross-entropy with logits, both Dice losses (`losses`);
- the exemplar triplet losses: O's mean-squared distance with sampled negatives and the hardest
  negative (NumPy transcription), S's `nn.TripletMarginLoss` with in-batch negatives
  (`exemplar_loss`);
- the CPC head and loss (nn.GRU, per-step Linear predictions, binary and InfoNCE) (`cpc_loss`);
- the MLP head (Linear -> ReLU -> BatchNorm1d(eps 1e-3, momentum 0.01) per hidden layer, then a
  Linear), train and eval mode (`mlp_head`);
- cumulative grade decoding `sum(sigmoid(logits) > 0.5) - 1` with scikit-learn's confusion
  matrix and quadratic kappa on the decoded grades (`cumulative_grades`);
- a reduced torchvision DenseNet (growth 8, blocks 2-2-2-2, 16 initial features, bn_size 2),
  the whole feature extractor in eval and train mode with torch's own initialisation
  (`densenet_small`).

    python scripts/make_reference_fixtures.py   # torch, torchvision, numpy, safetensors, scikit-learn
"""
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torch")


def save(name, tensors):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name + ".safetensors")
    t = {}
    for k, v in tensors.items():
        t[k] = torch.as_tensor(v).detach().contiguous()
    save_file(t, path)
    print(f"{path}: {sum(v.numel() for v in t.values())} values, {os.path.getsize(path)} bytes")


def grads_of(y, *leaves):
    g = torch.randn_like(y)
    (y * g).sum().backward()
    return g, [l.grad for l in leaves]


# ---- 3: convolutions on the direct AVX-512 kernels ----

def conv_direct():
    def case(name, n, c, o, size):
        positions = n * size[0] * size[1] * size[2]
        vectors = n * -(-size[0] * size[1] * size[2] // 16)
        assert positions >= 512 and vectors >= 64, (positions, vectors)
        x = torch.randn((n, c) + size, requires_grad=True)
        w = (torch.randn((o, c, 3, 3, 3)) * (2.0 / (27 * c)) ** 0.5).requires_grad_()
        y = F.conv3d(x, w, None, stride=1, padding=1)
        g, (dx, dw) = grads_of(y, x, w)
        save(name, dict(x=x, w=w, y=y, g=g, dx=dx, dw=dw))

    torch.manual_seed(30)
    # One input channel (a UNet's first layer), 16 outputs, one sample of 9x9x13 = 1053
    # positions (66 vectors, the last one partial).
    case("conv3d_direct_c1_o16", 1, 1, 16, (9, 9, 13))
    # 17 input channels (partial weight-gradient tiles), 5 outputs (a partial forward tile),
    # two samples of 5x9x13 = 585 positions (37 vectors each, the last partial).
    case("conv3d_direct_c17_o5", 2, 17, 5, (5, 9, 13))


# ---- 4: inference BatchNorm ----

def batch_norm_eval():
    torch.manual_seed(31)
    c = 5
    bn = nn.BatchNorm3d(c, eps=1e-3, momentum=0.01)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c))
        bn.bias.copy_(torch.randn(c))
        bn.running_mean.copy_(torch.randn(c))
        bn.running_var.copy_(torch.rand(c) * 2 + 0.1)
    bn.eval()
    x = torch.randn(2, c, 3, 4, 5) * 1.5
    b = torch.randn(c) * 0.5
    with torch.no_grad():
        y = bn(x)
        y_fused = bn(F.relu(x + b.reshape(1, c, 1, 1, 1)))
    save("batch_norm3d_eval", dict(x=x, conv_bias=b, weight=bn.weight, bias=bn.bias,
                                   running_mean=bn.running_mean, running_var=bn.running_var,
                                   y=y, y_bias_relu=y_fused))


# ---- 5: Adam (Keras' form) with per-tensor clipping ----

def keras_adam(params, grads, lr, clipnorm, clipvalue, b1=0.9, b2=0.999, eps=1e-7):
    """NumPy transcription of tf.keras.optimizers.Adam (TF2 OptimizerV2): gradients of None are
    skipped; the iteration count is global; clipnorm then clipvalue, each per tensor."""
    p = [x.astype(np.float64).copy() for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    history = []
    for t, gs in enumerate(grads, start=1):
        lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i, g in enumerate(gs):
            if g is None:
                continue
            g = g.astype(np.float64)
            if clipnorm is not None:
                n = np.sqrt((g * g).sum())
                g = g * clipnorm / max(n, clipnorm)
            if clipvalue is not None:
                g = np.clip(g, -clipvalue, clipvalue)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p[i] = p[i] - lr_t * m[i] / (np.sqrt(v[i]) + eps)
        history.append([x.copy() for x in p])
    return history


def torch_adam(params, grads, lr, clipnorm, clipvalue, b1=0.9, b2=0.999, eps=1e-7):
    """torch.optim.Adam made equal to Keras' update: eps_t = eps / sqrt(1 - b2^t)."""
    ps = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in params]
    opt = torch.optim.Adam(ps, lr=lr, betas=(b1, b2), eps=eps)
    history = []
    for t, gs in enumerate(grads, start=1):
        for p, g in zip(ps, gs):
            g = torch.tensor(g, dtype=torch.float64)
            if clipnorm is not None:
                n = g.norm()
                if n > clipnorm:
                    g = g * (clipnorm / n)
            if clipvalue is not None:
                g = g.clamp(-clipvalue, clipvalue)
            p.grad = g
        opt.param_groups[0]["eps"] = eps / np.sqrt(1 - b2 ** t)
        opt.step()
        history.append([p.detach().numpy().copy() for p in ps])
    return history


def adam():
    rng = np.random.default_rng(32)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    scales = [2.0, 0.05, 0.8]  # clipped by norm; never clipped; clipped by value only
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    steps = 5
    grads = [[(rng.standard_normal(s) * sc).astype(np.float32) for s, sc in zip(shapes, scales)]
             for _ in range(steps)]
    configs = {"plain": (None, None), "paper": (1.0, 1.0), "norm2_value03": (2.0, 0.3)}
    lr = 0.05
    # The transcription against torch, every parameter with a gradient at every step.
    for key, (cn, cv) in configs.items():
        k = keras_adam(params, grads, lr, cn, cv)
        t = torch_adam(params, grads, lr, cn, cv)
        for a, b in zip(k, t):
            for x, y in zip(a, b):
                assert np.abs(x - y).max() < 1e-12, (key, np.abs(x - y).max())
    # The fixture: parameter 2 has no gradient at step 3 (left alone, global step count).
    grads[2][2] = None
    out = {f"param{i}": p for i, p in enumerate(params)}
    for t, gs in enumerate(grads):
        for i, g in enumerate(gs):
            if g is not None:
                out[f"grad{i}_step{t}"] = g
    for key, (cn, cv) in configs.items():
        for t, ps in enumerate(keras_adam(params, grads, lr, cn, cv)):
            for i, p in enumerate(ps):
                out[f"{key}.param{i}_after{t}"] = torch.tensor(p)
    out["lr"] = np.array([lr], dtype=np.float64)
    save("adam_keras_f64", {k: torch.as_tensor(v, dtype=torch.float64) for k, v in out.items()})


# ---- 5: losses ----

def losses():
    torch.manual_seed(33)
    logits = torch.randn(6, 5) * 3
    logits[2] = torch.tensor([80.0, -80.0, 0.0, 79.0, -3.0])  # stability
    logits.requires_grad_()
    targets = torch.tensor([0, 4, 3, 1, 2, 2])
    ce = F.cross_entropy(logits, targets)
    ce.backward()

    z = torch.randn(4, 5) * 4
    z[0] = torch.tensor([100.0, -100.0, 0.0, 30.0, -30.0])
    z.requires_grad_()
    y = torch.rand(4, 5)
    y[1] = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    bce = F.binary_cross_entropy_with_logits(z, y)
    bce.backward()

    # Dice on probabilities p [2, 3, 4, 5, 3] against one-hot labels; gradients w.r.t. p.
    p = torch.softmax(torch.randn(2, 3, 4, 5, 3) * 2, 1).requires_grad_()
    labels = torch.randint(0, 3, (2, 4, 5, 3))
    labels[1][labels[1] == 2] = 1  # class 2 absent from sample 1 (per-sample Dice of ε/ε)
    onehot = F.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()
    eps = 1e-5
    dims = (2, 3, 4)
    inter = (p * onehot).sum(dims)
    total = p.sum(dims) + onehot.sum(dims)
    per_sample = 1 - ((2 * inter + eps) / (total + eps)).mean()
    batch = -((2 * inter.sum(0) + eps) / (total.sum(0) + eps)).mean()
    (dp_ps,) = torch.autograd.grad(per_sample, p, retain_graph=True)
    (dp_b,) = torch.autograd.grad(batch, p)
    save("losses", dict(ce_logits=logits, ce_targets=targets, ce=ce.reshape(1), ce_dlogits=logits.grad,
                        bce_logits=z, bce_targets=y, bce=bce.reshape(1), bce_dlogits=z.grad,
                        dice_p=p, dice_labels=labels.to(torch.uint8),
                        dice_per_sample=per_sample.reshape(1), dice_per_sample_dp=dp_ps,
                        dice_batch=batch.reshape(1), dice_batch_dp=dp_b))


def exemplar():
    """O: d = mean_k (a-b)^2, L = mean relu(d(a,p) - d(a,n) + 1) (sst/utils/metrics.py);
    S: nn.TripletMarginLoss(margin=1) (Euclidean) with another item's positive as negative;
    the hardest negative: the nearest of the other positives (and the sampled negatives)."""
    torch.manual_seed(34)
    b, code = 5, 6
    a, p, n = (torch.sigmoid(torch.randn(b, code) * 2).requires_grad_() for _ in range(3))
    out = dict(a=a, p=p, n=n)

    def ms(u, v):
        return ((u - v) ** 2).mean(-1)

    def eu(u, v):
        return (((u - v) ** 2).sum(-1) + 1e-12).sqrt()

    def record(key, d_ap, d_an, loss):
        ga, gp, gn = torch.autograd.grad(loss, (a, p, n), allow_unused=True)
        out[key + ".loss"] = loss.reshape(1)
        out[key + ".accuracy"] = (d_ap < d_an).double().mean().reshape(1)
        for nm, g in (("da", ga), ("dp", gp), ("dn", gn)):
            out[f"{key}.{nm}"] = g if g is not None else torch.zeros(b, code)

    rolled = lambda t: torch.cat([t[1:], t[:1]], 0)  # item i's negative: positive i+1
    # O: sampled (dataset) negatives.
    d_ap, d_an = ms(a, p), ms(a, n)
    record("ms_dataset", d_ap, d_an, F.relu(d_ap - d_an + 1.0).mean())
    # S: torch's TripletMarginLoss (pairwise_distance adds 1e-6 to the difference).
    loss = nn.TripletMarginLoss(margin=1.0)(a, p, rolled(p))
    record("euclidean_batch", eu(a, p), eu(a, rolled(p)), loss)
    # The hardest negative among the other positives and the sampled negatives (mean squared).
    pool = torch.cat([p, n], 0)
    d = ((a[:, None, :] - pool[None, :, :]) ** 2).mean(-1)
    d = d + torch.eye(b, 2 * b) * 1e9
    d_an = d.min(-1).values
    d_ap = ms(a, p)
    record("ms_hardest_dataset", d_ap, d_an, F.relu(d_ap - d_an + 1.0).mean())
    # The hardest of the other positives only, Euclidean, margin 0.5.
    d = (((a[:, None, :] - p[None, :, :]) ** 2).sum(-1) + 1e-12).sqrt() + torch.eye(b) * 1e9
    d_an = d.min(-1).values
    d_ap = eu(a, p)
    record("euclidean_hardest_batch_m05", d_ap, d_an, F.relu(d_ap - d_an + 0.5).mean())
    save("exemplar_loss", out)


def cpc():
    """O's CPC head (sst/algorithms/cpc.py) on given patch codes: a GRU over the context codes
    (last state), one Linear per predicted step, score = mean_k mean_d(pred_k * target_k),
    binary cross-entropy of the score (a logit) against the label; and the InfoNCE option:
    over the positive examples, scores_k = pred_k @ target_k^T / code, averaged over k,
    cross-entropy against the diagonal."""
    torch.manual_seed(35)
    m, code, hidden, e, ctx_len, k = 12, 6, 5, 6, 4, 2
    codes = (torch.randn(m, code) * 2).requires_grad_()
    context = torch.randint(0, m, (e, ctx_len))
    targets = torch.randint(0, m, (e, k))
    y = torch.tensor([1, 0, 1, 1, 0, 1])
    gru = nn.GRU(code, hidden, batch_first=True)
    preds = nn.ModuleList([nn.Linear(hidden, code) for _ in range(k)])
    params = dict(gru.named_parameters())
    params.update({f"predict{i}.{n}": p for i, l in enumerate(preds) for n, p in l.named_parameters()})
    out = {"codes": codes, "context": context.to(torch.int64), "targets": targets.to(torch.int64),
           "y": y.to(torch.int64)}
    out.update({"param." + n: p for n, p in params.items()})

    def head():
        _, h = gru(codes[context.flatten()].reshape(e, ctx_len, code))
        c = h[0]
        return [preds[j](c) for j in range(k)], [codes[targets[:, j]] for j in range(k)]

    pr, tg = head()
    logit = sum((pj * tj).mean(-1) for pj, tj in zip(pr, tg)) / k
    loss = F.binary_cross_entropy_with_logits(logit, y.double() if logit.dtype == torch.float64 else y.float())
    acc = ((logit > 0).long() == y).double().mean()
    leaves = [codes] + list(params.values())
    gs = torch.autograd.grad(loss, leaves)
    out["binary.loss"] = loss.reshape(1)
    out["binary.accuracy"] = acc.reshape(1)
    out["binary.dcodes"] = gs[0]
    out.update({"binary.grad." + n: g for n, g in zip(params, gs[1:])})

    pos = torch.nonzero(y == 1).flatten()
    pr, tg = head()
    scores = sum(pj[pos] @ tj[pos].T / code for pj, tj in zip(pr, tg)) / k
    diag = torch.arange(len(pos))
    loss = F.cross_entropy(scores, diag)
    acc = (scores.argmax(-1) == diag).double().mean()
    gs = torch.autograd.grad(loss, leaves)
    out["infonce.loss"] = loss.reshape(1)
    out["infonce.accuracy"] = acc.reshape(1)
    out["infonce.dcodes"] = gs[0]
    out.update({"infonce.grad." + n: g for n, g in zip(params, gs[1:])})
    save("cpc_loss", out)


def mlp_head():
    """O's fully_connected_big / simple_multiclass: per hidden layer Dense -> ReLU -> BN
    (Keras eps 1e-3, momentum 0.99 = torch 0.01) -> Dropout (0 here), then Dense (logits)."""
    torch.manual_seed(36)
    d_in, hidden, d_out = 7, [6, 5], 4
    layers, names = [], []
    d = d_in
    for i, w in enumerate(hidden):
        fc, bn = nn.Linear(d, w), nn.BatchNorm1d(w, eps=1e-3, momentum=0.01)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(w) + 0.5)
            bn.bias.copy_(torch.randn(w) * 0.3)
        layers += [fc, nn.ReLU(), bn]
        names += [(f"fc{i}", fc), (f"bn{i}", bn)]
        d = w
    out_layer = nn.Linear(d, d_out)
    names.append(("out", out_layer))
    net = nn.Sequential(*layers, out_layer)
    t = {}
    for prefix, mod in names:
        for n, v in mod.state_dict().items():
            if "num_batches_tracked" not in n:
                t[f"init.{prefix}.{n}"] = v.clone()
    x = torch.randn(8, d_in, requires_grad=True)
    net.train()
    y = net(x)
    g, _ = grads_of(y, x)
    t.update(x=x, y_train=y, g=g, dx=x.grad)
    for prefix, mod in names:
        for n, p in mod.named_parameters():
            t[f"grad.{prefix}.{n}"] = p.grad
        if prefix.startswith("bn"):
            t[f"after.{prefix}.running_mean"] = mod.running_mean
            t[f"after.{prefix}.running_var"] = mod.running_var
    net.eval()
    x2 = torch.randn(3, d_in)
    with torch.no_grad():
        t.update(x_eval=x2, y_eval=net(x2))
    save("mlp_head", t)


def cumulative_grades():
    """O: grade g -> the first g+1 of 5 bits; decoded as sum(sigmoid(logits) > 0.5) - 1 (which
    can be -1); the confusion matrix and quadratic kappa with labels=[0..4] (sklearn leaves
    pairs whose prediction is not a label out)."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix
    rng = np.random.default_rng(37)
    n = 24
    truth = rng.integers(0, 5, n)
    logits = rng.standard_normal((n, 5)).astype(np.float32) * 3
    logits[0] = [-1, -2, -3, -4, -5]        # nothing above 0.5: grade -1
    logits[1] = [1, 2, 3, 4, 5]             # all five: grade 4
    logits[2] = [2, -1, 3, -2, 0]           # non-monotone: two above -> grade 1; 0 is not above 0.5
    logits[3] = [0, 0, 0, 0, 0]             # sigmoid(0) = 0.5 exactly: grade -1
    logits[4] = [4, 3, 2, -1, -2]           # a clean grade 2
    p = torch.sigmoid(torch.tensor(logits)).numpy()
    pred = (p > 0.5).sum(-1) - 1
    bits = (np.arange(5)[None, :] <= truth[:, None]).astype(np.float32)
    labels = list(range(5))
    cm = confusion_matrix(truth, pred, labels=labels)
    kappa = cohen_kappa_score(truth, pred, labels=labels, weights="quadratic")
    keep = pred >= 0
    acc = (truth[keep] == pred[keep]).mean()
    save("cumulative_grades", dict(logits=torch.tensor(logits), truth=torch.tensor(truth, dtype=torch.int64),
                                   decoded=torch.tensor(pred, dtype=torch.int64),
                                   bits=torch.tensor(bits), confusion=torch.tensor(cm, dtype=torch.int64),
                                   kappa=torch.tensor([kappa], dtype=torch.float64),
                                   accuracy_decodable=torch.tensor([acc], dtype=torch.float64)))


def densenet_small():
    """torchvision's DenseNet class, reduced (growth 8, blocks 2-2-2-2, 16 initial features,
    bn_size 2) with torch's own initialisation and random running statistics; the features
    (after norm5 and ReLU) and both global poolings of a 1x3x64x64 input in eval mode (on the
    running statistics) and train mode (batch statistics), computed in float64 from the float32
    weights; in train mode also the gradients of sum(avg-pooled features * g) and the updated
    running statistics."""
    from torchvision.models.densenet import DenseNet
    torch.manual_seed(38)
    net = DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.rand_like(mod.weight) + 0.5)
                mod.bias.copy_(torch.randn_like(mod.bias) * 0.2)
                mod.running_mean.copy_(torch.randn_like(mod.running_mean) * 0.2)
                mod.running_var.copy_(torch.rand_like(mod.running_var) + 0.5)
    state = {k: v.clone() for k, v in net.features.state_dict().items() if "num_batches_tracked" not in k}
    x = torch.rand(1, 3, 64, 64)
    net = net.double()
    xd = x.double()

    def feats(inp):
        return F.relu(net.features(inp))

    net.eval()
    with torch.no_grad():
        f_eval = feats(xd)
    net.train()
    f_train = feats(xd)
    pooled = F.adaptive_avg_pool2d(f_train, 1).flatten(1)
    g = torch.randn_like(pooled)
    (pooled * g).sum().backward()
    t = {"param.features." + k: v for k, v in state.items()}
    t.update({"grad." + k: p.grad for k, p in net.named_parameters() if p.grad is not None})
    t.update({"after.features." + k: v for k, v in net.features.state_dict().items() if "running" in k})
    t.update(x=x, features_eval=f_eval, avg_eval=F.adaptive_avg_pool2d(f_eval, 1).flatten(1),
             max_eval=F.adaptive_max_pool2d(f_eval, 1).flatten(1), features_train=f_train,
             g=g)
    print("reduced DenseNet parameters:", sum(p.numel() for p in net.parameters()))
    save("densenet_small_f64", t)


if __name__ == "__main__":
    conv_direct()
    batch_norm_eval()
    adam()
    losses()
    exemplar()
    cpc()
    mlp_head()
    cumulative_grades()
    densenet_small()
