"""The adaptive mixing network alpha_theta(x) (the adaptive-smoothing paper's Sec. 4.3, Fig. 3 and 10, App. C.2, D.1).

Inputs: features tapped from two depths ("shallow" = upstream, "middle") of both frozen base models, in the
same forward pass that produces their logits. Architecture (Fig. 3/10, scaled to our models):

  shallow: concat(g_shallow, h_shallow) -> Conv1x1-BN-ReLU -> average-pooled to the middle resolution
  middle:  concat(g_middle, h_middle) -> Conv1x1-BN-ReLU ("a linear transformation layer (Conv1x1) to match
           the dimensions, reduce the number of features, and improve efficiency", App. D.1)
  concat(shallow, middle) -> ``blocks`` ResNet blocks (the first with stride 2 when the middle map is larger
  than 8x8) -> global average pool -> Linear(1) -> BatchNorm1d without affine (App. C.2) -> sigmoid(scale * z).

Deviation from Fig. 10 (which runs a ResNet block at the shallow resolution and a ResNet-18-like trunk):
this network is kept small so that a training step costs at most ~1.3x one forward+backward through the two
base models even for our small CNNs on 8x8 digits (see ``benchmarks/mixnet_step.py``); ``width`` and
``blocks`` scale it up for big base models.

Cost of the alpha path inside every attack step (it runs ``k`` times per training step): the 1x1 branches
are batched matrix products over each tapped map with its slice of the weight (the large shallow maps are
never copied into a concatenation, and the input gradients stay NCHW-contiguous so the base models' own
backward kernels keep their fast path); in eval mode (attacks, inference) every BatchNorm is folded into the
preceding convolution / linear layer; even resizing uses average pooling. Same values as the plain module
composition (:meth:`AlphaNet.logit_reference`) up to float rounding; the state dict is unchanged.

Vector features (MLPs) are treated as 1x1 maps, so the same network applies. Feature maps of g and h with
different spatial sizes are resized by adaptive average pooling to the smaller one. Layer names default per
registered architecture (see :data:`DEFAULT_LAYERS`); any other model needs explicit names.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from robcli.errors import ModelError

# (shallow, middle) tap points, relative to a robcli model (the Normalized wrapper: its network is ``net``).
# ResNets / WRNs: the first residual stage and the second (App. D.1: "the initial Conv2D layer and the first
# ResNet block as the upstream layers ... the second ResNet block as the middle layers").
DEFAULT_LAYERS: dict[str, tuple[str, str]] = {
    "resnet18": ("net.layer1", "net.layer2"),
    "resnet18_tiny": ("net.layer1", "net.layer2"),
    "resnet50": ("net.layer1", "net.layer2"),
    "wrn-28-10": ("net.block1", "net.block2"),
    "wrn-34-10": ("net.block1", "net.block2"),
    "wrn_tiny": ("net.block1", "net.block2"),
    # SmallCNN: after the first conv-BN-ReLU, and after the first pooling stage
    "small_cnn": ("net.features.2", "net.features.6"),
    "tiny_cnn": ("net.features.2", "net.features.6"),
    # MLPs: after the first and the second hidden ReLU
    "mlp": ("net.net.2", "net.net.4"),
    "tiny_mlp": ("net.net.2", "net.net.4"),
}


def default_layers(model: nn.Module, arch: str | None = None, who: str = "model") -> tuple[str, str]:
    """The (shallow, middle) layer names for ``model``: by architecture name, else the first known pair it has.

    Raises:
        ModelError: no default fits; the message lists the model's layers so the user can pick two.
    """
    names = {n for n, _ in model.named_modules()}
    if arch is not None and arch in DEFAULT_LAYERS and set(DEFAULT_LAYERS[arch]) <= names:
        return DEFAULT_LAYERS[arch]
    for pair in DEFAULT_LAYERS.values():
        if set(pair) <= names:
            return pair
    avail = [n for n, _ in model.named_modules() if n]
    raise ModelError(
        f"no default feature layers for {who} (architecture {arch!r}); name two with --layers-g/--layers-h; "
        f"available layers: {', '.join(avail)}"
    )


def _as_map(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 4:
        return t
    if t.dim() == 2:
        return t[:, :, None, None]
    if t.dim() == 3:  # (B, C, L) sequences
        return t[:, :, :, None]
    return t.flatten(1)[:, :, None, None]


def _resize(t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    H, W = t.shape[-2:]
    if (H, W) == tuple(hw):
        return t
    if H % hw[0] == 0 and W % hw[1] == 0:  # same windows as adaptive pooling, a cheaper kernel (fwd and bwd)
        k = (H // hw[0], W // hw[1])
        return F.avg_pool2d(t, k, k)
    return F.adaptive_avg_pool2d(t, hw)


def _bn_fold(bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * s + b (running statistics)."""
    s = torch.rsqrt(bn.running_var + bn.eps)
    b = -bn.running_mean * s
    if bn.affine:
        s = s * bn.weight
        b = b * bn.weight + bn.bias
    return s, b


def _can_fold(bn: nn.Module) -> bool:
    return not bn.training and bn.running_var is not None


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """bn(conv(x)); in eval mode as ONE convolution with the BatchNorm folded into its weight and bias."""
    if not _can_fold(bn):
        return bn(conv(x))
    s, b = _bn_fold(bn)
    if conv.bias is not None:
        b = b + conv.bias * s
    return F.conv2d(x, conv.weight * s.view(-1, 1, 1, 1), b, conv.stride, conv.padding, conv.dilation, conv.groups)


def _pointwise_bn_relu(branch: nn.Sequential, parts: list[torch.Tensor]) -> torch.Tensor:
    """relu(bn(conv1x1(cat(parts)))) of a Conv1x1-BN-ReLU branch, without materializing the concatenation.

    The 1x1 convolution is a matrix product over channels, computed per part with that part's slice of the
    weight (no copy of the large shallow feature maps into a concatenated tensor); in eval mode the BatchNorm
    is folded into the weight and bias. Same values as the module composition up to float rounding.
    """
    conv, bn = branch[0], branch[1]
    w = conv.weight.flatten(1)  # (O, C)
    bias = conv.bias
    if _can_fold(bn):
        s, b = _bn_fold(bn)
        w = w * s[:, None]
        bias = b if bias is None else b + bias * s
    B, _, H, W = parts[0].shape
    out = None
    c0 = 0
    for p in parts:
        c = p.shape[1]
        # bmm with the weight expanded over the batch (a view): output AND input gradient stay NCHW-contiguous,
        # so the base models' backward kernels (max-pool, BN) keep their fast path
        term = torch.bmm(w[:, c0:c0 + c].expand(B, -1, -1), p.reshape(B, c, H * W))
        out = term if out is None else out + term
        c0 += c
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    out = out.view(B, -1, H, W)
    if not _can_fold(bn):
        out = bn(out)
    return F.relu(out)


class ResBlock(nn.Module):
    """A basic ResNet block (He et al.): conv-BN-ReLU-conv-BN plus (projected) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(_conv_bn(self.c1, self.b1, x))
        out = _conv_bn(self.c2, self.b2, out)
        sc = _conv_bn(self.short[0], self.short[1], x) if len(self.short) else x
        return F.relu(out + sc)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain module composition (tests check ``forward`` against it)."""
        out = F.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        return F.relu(out + self.short(x))


class AlphaNet(nn.Module):
    """alpha_theta: tapped features -> (B,) weights in (0, 1).

    Args:
        shallow_channels: channels of (g_shallow, h_shallow) features; middle_channels likewise.
        width: channels of each of the two branches (the residual trunk has 2 * width).
        blocks: ResNet blocks in the trunk (the first has stride 2 when the map is larger than 4x4).
        sigmoid_scale: the scale of the sigmoid input (App. C.2, Table 7: 2 was best on CIFAR-10).
        shift: a constant added to the sigmoid input (App. C.2 shifts the output to set the clean accuracy).
    """

    def __init__(self, shallow_channels: tuple[int, int], middle_channels: tuple[int, int], *, width: int = 16,
                 blocks: int = 1, sigmoid_scale: float = 2.0, shift: float = 0.0, stride2: bool = False):
        super().__init__()
        self.config = {"shallow_channels": [int(c) for c in shallow_channels],
                       "middle_channels": [int(c) for c in middle_channels], "width": int(width),
                       "blocks": int(blocks), "sigmoid_scale": float(sigmoid_scale), "shift": float(shift),
                       "stride2": bool(stride2)}
        cs, cm = sum(shallow_channels), sum(middle_channels)
        # both branches: Conv1x1 to `width` channels (App. D.1: "Conv1x1 to match the dimensions, reduce the
        # number of features, and improve efficiency"); the shallow branch is then pooled to the middle resolution
        self.up = nn.Sequential(nn.Conv2d(cs, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(cm, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.trunk = nn.Sequential(*[ResBlock(2 * width, 2 * width, 2 if (i == 0 and stride2) else 1)
                                     for i in range(max(1, int(blocks)))])
        self.fc = nn.Linear(2 * width, 1)
        self.out_bn = nn.BatchNorm1d(1, affine=False)  # App. C.2: output BN without trainable affine
        self.sigmoid_scale = float(sigmoid_scale)
        self.shift = float(shift)

    @staticmethod
    def _sizes(feats):
        gs, gm, hs, hm = (_as_map(f) for f in feats)
        hw_s = min(gs.shape[-2], hs.shape[-2]), min(gs.shape[-1], hs.shape[-1])
        hw_m = min(gm.shape[-2], hm.shape[-2]), min(gm.shape[-1], hm.shape[-1])
        hw = min(hw_s[0], hw_m[0]), min(hw_s[1], hw_m[1])
        return gs, gm, hs, hm, hw_s, hw_m, hw

    def logit(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The pre-sigmoid output z (B,) after the output BatchNorm.

        Computed without concatenating the tapped maps (per-part 1x1 products) and, in eval mode (attacks,
        inference), with every BatchNorm folded into the preceding convolution / linear layer; the values
        equal :meth:`logit_reference` (the plain module composition) up to float rounding.
        """
        gs, gm, hs, hm, hw_s, hw_m, hw = self._sizes(feats)
        s = _resize(_pointwise_bn_relu(self.up, [_resize(gs, hw_s), _resize(hs, hw_s)]), hw)
        m = _resize(_pointwise_bn_relu(self.mid, [_resize(gm, hw_m), _resize(hm, hw_m)]), hw)
        z = self.trunk(torch.cat([s, m], 1))
        z = z.mean((2, 3))
        if _can_fold(self.out_bn):
            s, b = _bn_fold(self.out_bn)
            return F.linear(z, self.fc.weight * s[:, None], self.fc.bias * s + b).squeeze(1)
        return self.out_bn(self.fc(z)).squeeze(1)

    def logit_reference(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The plain module composition of Fig. 3 (concatenations, separate BatchNorms); for tests."""
        gs, gm, hs, hm, hw_s, hw_m, hw = self._sizes(feats)
        s = F.adaptive_avg_pool2d(self.up(torch.cat([F.adaptive_avg_pool2d(gs, hw_s),
                                                     F.adaptive_avg_pool2d(hs, hw_s)], 1)), hw)
        m = F.adaptive_avg_pool2d(self.mid(torch.cat([F.adaptive_avg_pool2d(gm, hw_m),
                                                      F.adaptive_avg_pool2d(hm, hw_m)], 1)), hw)
        z = torch.cat([s, m], 1)
        for blk in self.trunk:
            z = blk.forward_reference(z)
        z = F.adaptive_avg_pool2d(z, 1).flatten(1)
        return self.out_bn(self.fc(z)).squeeze(1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.sigmoid_scale * self.logit(feats) + self.shift)


def build_alpha_net(g: nn.Module, h: nn.Module, layers_g: tuple[str, str], layers_h: tuple[str, str],
                    input_shape, *, width: int = 16, blocks: int = 1, sigmoid_scale: float = 2.0,
                    shift: float = 0.0, device=None) -> AlphaNet:
    """Build an ``AlphaNet`` whose input channels fit the tapped layers (one probe forward pass each).

    Raises:
        ModelError: unknown layer names (listing the available ones) or fewer/more than two per model.
    """
    from robcli.mixing.mixed import FeatureTaps

    for who, names in (("core model g", layers_g), ("robust model h", layers_h)):
        if len(tuple(names)) != 2:
            raise ModelError(f"{who}: give exactly two feature layers (shallow, middle), got {len(tuple(names))}")
    chans: list[list[int]] = []
    sizes: list[int] = []
    for m, names, who in ((g, layers_g, "core model g"), (h, layers_h, "robust model h")):
        taps = FeatureTaps(m, tuple(names), who)
        try:
            p = next(iter(m.parameters()), None)
            dev = device if device is not None else (p.device if p is not None else "cpu")
            with torch.no_grad():
                m.eval()
                m(torch.full((2, *input_shape), 0.5, device=dev))
            feats = [_as_map(f) for f in taps.pop()]
            chans.append([f.shape[1] for f in feats])
            sizes.append(min(feats[1].shape[-2:]))
        finally:
            taps.remove()
    net = AlphaNet((chans[0][0], chans[1][0]), (chans[0][1], chans[1][1]), width=width, blocks=blocks,
                   sigmoid_scale=sigmoid_scale, shift=shift, stride2=max(sizes) > 8)
    p0 = next(iter(g.parameters()), None)
    target = device if device is not None else (p0.device if p0 is not None else None)
    return net.to(target) if target is not None else net
