"""The paper's 3D UNet in PyTorch, mirroring pretext's parameter names (encoder.down.{i},
encoder.bottleneck, decoder.up.{i}, decoder.block.{i}, decoder.head), and O's Dice loss.
Shared by make_fixtures.py and bench_torch.py."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """conv -> ReLU -> BN -> dropout -> conv -> ReLU -> BN (O's conv3d_block)."""

    def __init__(self, cin, f, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, f, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(f, eps=1e-3, momentum=0.01)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(f, f, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(f, eps=1e-3, momentum=0.01)

    def forward(self, x):
        x = self.drop(self.bn1(F.relu(self.conv1(x))))
        return self.bn2(F.relu(self.conv2(x)))


class Encoder(nn.Module):
    def __init__(self, cin, f, depth, dropout=0.0):
        super().__init__()
        self.down = nn.ModuleList(
            [Block(cin if i == 0 else f * 2 ** (i - 1), f * 2 ** i, dropout) for i in range(depth)])
        self.bottleneck = Block(f * 2 ** (depth - 1), f * 2 ** depth, dropout)

    def forward(self, x):
        skips = []
        for b in self.down:
            x = b(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        x = self.bottleneck(x)
        return F.max_pool3d(x, 2), skips


class Decoder(nn.Module):
    def __init__(self, f, depth, classes, dropout=0.0):
        super().__init__()
        chans = [f * 2 ** i for i in range(depth)][::-1]
        ins = [f * 2 ** depth] + chans[:-1]
        self.up = nn.ModuleList([nn.ConvTranspose3d(i, c, 2, stride=2) for i, c in zip(ins, chans)])
        self.block = nn.ModuleList([Block(2 * c, c, dropout) for c in chans])
        self.head = nn.Conv3d(f, classes, 1)

    def forward(self, x, skips):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        for up, block, skip in zip(self.up, self.block, skips[::-1]):
            x = block(torch.cat([up(x), skip], 1))
        return self.head(x)


class UNet3D(nn.Module):
    """Returns class logits; the paper's model ends in a softmax, applied by the loss here."""

    def __init__(self, cin=1, f=16, depth=4, classes=3, dropout=0.0):
        super().__init__()
        self.encoder = Encoder(cin, f, depth, dropout)
        self.decoder = Decoder(f, depth, classes, dropout)

    def forward(self, x):
        feats, skips = self.encoder(x)
        return self.decoder(feats, skips)


def dice_loss(p, y, eps=1e-5):
    """O's weighted_dice_coefficient_loss: sums over batch and voxels per class, mean over classes."""
    dims = (0,) + tuple(range(2, p.dim()))
    inter = (p * y).sum(dims)
    return -((2 * inter + eps) / (p.sum(dims) + y.sum(dims) + eps)).mean()
