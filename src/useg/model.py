"""UniverSeg: in-context segmentation of a target image from a support set of (image, label) pairs.

Parameter names and the computed function match the official v1 model, so its
weight file loads with `strict=True` (useg.weights reads weight files: this module only
builds the model). Shapes in comments: B batch, S support size, C channels, H W image
size; the target always carries a size-1 S axis.

Two implementations of the same function (`cross_impl`): "concat" computes it as
the paper describes (the reference); "split" (the default) uses the linearity of
the cross conv to do less work, see `CrossOp` and `UniverSeg.forward`, and keeps
support features channels-last, which oneDNN's CPU convs run faster. `python -m bench`
measures the difference.
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from useg.errors import ConfigError

CROSS_IMPLS = ("split", "concat")


def _init_conv(conv: nn.Conv2d, nonlinearity: str) -> None:
    nn.init.kaiming_normal_(conv.weight, nonlinearity=nonlinearity)
    nn.init.zeros_(conv.bias)


class ConvOp(nn.Module):
    """Conv (same padding) with an optional LeakyReLU, on "N C H W"."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, activation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        # In place: nothing else reads the conv's output (its backward needs the input), and at
        # the official size this saves ~17 % of a training step's peak memory.
        self.activation = nn.LeakyReLU(0.01, inplace=True) if activation else nn.Identity()
        _init_conv(self.conv, "leaky_relu" if activation else "linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x))


class Vmap(nn.Module):
    """Applies a "N C H W" module to every element of a "B S C H W" tensor."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.vmapped = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vmapped(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def _vmap(fn, x: torch.Tensor) -> torch.Tensor:
    return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class CrossOp(nn.Module):
    """3x3 conv over cat(target, support_s) for every support element s; no nonlinearity.

    "concat" builds every pair explicitly (the reference). "split" uses
    conv(cat(t, s), W) = conv(t, W_t) + conv(s, W_s) + b, so the target half is
    computed once per target instead of once per pair. Both own the same
    `cross_conv` weight (out, c_t + c_s, 3, 3) and bias.
    """

    def __init__(self, in_channels: tuple[int, int], out_channels: int, impl: str = "split"):
        super().__init__()
        self.target_channels, self.support_channels = in_channels
        self.impl = impl
        self.cross_conv = nn.Conv2d(sum(in_channels), out_channels, kernel_size=3, padding=1)
        _init_conv(self.cross_conv, "linear")

    def forward(self, target: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        # target: B 1 Ct H W, support: B S Cs H W -> B S Co H W
        if self.impl == "concat":
            return self._concat(target, support)
        return self._split(target, support)

    def _concat(self, target: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        pairs = torch.cat([target.expand(-1, support.shape[1], -1, -1, -1), support], dim=2)  # B S Ct+Cs H W
        return _vmap(lambda x: F.conv2d(x, self.cross_conv.weight, self.cross_conv.bias, padding=1), pairs)

    def _split(self, target: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        weight, bias = self.cross_conv.weight, self.cross_conv.bias
        w_target, w_support = weight.split([self.target_channels, self.support_channels], dim=1)
        target_part = _vmap(lambda x: F.conv2d(x, w_target, bias, padding=1), target)  # B 1 Co H W
        support_part = _vmap(lambda x: F.conv2d(x, w_support, padding=1), support)  # B S Co H W
        # Not in place: add_ on the unflattened view makes autograd copy the gradient back
        # through the view (CopySlices), which costs more than the new tensor. Support first,
        # so the sum keeps the support's memory layout.
        return support_part + target_part


class CrossBlock(nn.Module):
    """Cross conv over all pairs; mean over S is the new target; then separate conv paths."""

    def __init__(self, in_channels: tuple[int, int], cross_features: int, conv_features: int, impl: str = "split"):
        super().__init__()
        self.cross = CrossOp(in_channels, cross_features, impl)
        self.target = Vmap(ConvOp(cross_features, conv_features))
        self.support = Vmap(ConvOp(cross_features, conv_features))

    def forward(self, target: torch.Tensor, support: torch.Tensor, need_support: bool = True):
        interaction = self.cross(target, support)  # B S C H W
        target = self.target(interaction.mean(dim=1, keepdim=True))  # B 1 C H W
        # The last decoder block's support output is never used: skip its conv.
        support = self.support(interaction) if need_support else None  # B S C H W
        return target, support


class UniverSeg(nn.Module):
    """forward(target (B,1,H,W), support images (B,S,1,H,W), support labels (B,S,1,H,W)) -> logits (B,1,H,W)."""

    def __init__(self, widths: Sequence[int] = (64, 64, 64, 64), cross_impl: str = "split"):
        super().__init__()
        self.widths = tuple(widths)
        self.cross_impl = cross_impl
        in_channels = (1, 2)  # target image; support image + label
        skips = []
        self.enc_blocks = nn.ModuleList()
        for width in self.widths:
            self.enc_blocks.append(CrossBlock(in_channels, width, width, cross_impl))
            in_channels = (width, width)
            skips.append(in_channels)
        self.dec_blocks = nn.ModuleList()
        for width, (skip_t, skip_s) in zip(self.widths[-2::-1], skips[-2::-1]):
            in_channels = (in_channels[0] + skip_t, in_channels[1] + skip_s)  # upsampled, then skip
            self.dec_blocks.append(CrossBlock(in_channels, width, width, cross_impl))
            in_channels = (width, width)
        self.out_conv = ConvOp(in_channels[0], 1, kernel_size=1, activation=False)

    def forward(self, target_image: torch.Tensor, support_images: torch.Tensor, support_labels: torch.Tensor):
        self._check_inputs(target_image, support_images, support_labels)
        fast = self.cross_impl == "split"
        target = target_image.unsqueeze(1)  # B 1 1 H W
        support = torch.cat([support_images, support_labels.to(support_images.dtype)], dim=2)  # B S 2 H W
        if fast:
            support = _channels_last(support)  # convs, pooling and upsampling keep the layout from here on
        skips = []
        for level, block in enumerate(self.enc_blocks):
            target, support = block(target, support)
            if level < len(self.enc_blocks) - 1:
                skips.append((target, support))
                target, support = _vmap(_downsample, target), _vmap(_downsample, support)
        for level, block in enumerate(self.dec_blocks):
            skip_target, skip_support = skips.pop()
            last = level == len(self.dec_blocks) - 1
            if last and fast:
                # Only the last block's target output is used, and that is the mean over S of a
                # linear cross conv: the cross conv of the mean support (mean commutes with the
                # conv and with upsampling). Averaging first spares S full-size convs.
                support, skip_support = support.mean(dim=1, keepdim=True), skip_support.mean(dim=1, keepdim=True)
            target = _cat_channels(_vmap(_upsample, target), skip_target)
            support = _cat_channels(_vmap(_upsample, support), skip_support)
            target, support = block(target, support, need_support=not last)
        return self.out_conv(target.squeeze(1))  # B 1 H W

    def _check_inputs(self, target_image, support_images, support_labels) -> None:
        if target_image.dim() != 4 or target_image.shape[1] != 1:
            raise ConfigError(f"target image has shape {tuple(target_image.shape)}; expected (B, 1, H, W)")
        B, _, H, W = target_image.shape
        for name, tensor in (("support images", support_images), ("support labels", support_labels)):
            if tensor.dim() != 5 or tensor.shape[0] != B or tensor.shape[2] != 1 or tensor.shape[3:] != (H, W):
                expected = f"(B, S, 1, H, W) = ({B}, S, 1, {H}, {W})"
                raise ConfigError(f"{name} have shape {tuple(tensor.shape)}; expected {expected}")
        factor = 2 ** (len(self.widths) - 1)
        if H % factor or W % factor:
            raise ConfigError(
                f"image size {H}x{W} is not divisible by {factor} (needed by {len(self.widths)} levels); "
                f"resize images to a multiple of {factor}, e.g. 128x128"
            )


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """B S C H W stored as (B S) H W C."""
    return x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])


def _cat_channels(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """cat on the C axis of B S C H W tensors; done on "N C H W" views, which keeps a channels-last layout."""
    return torch.cat([first.flatten(0, 1), second.flatten(0, 1)], dim=1).unflatten(0, first.shape[:2])


def _downsample(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=2, stride=2)


def _upsample(x: torch.Tensor) -> torch.Tensor:
    # Same as nn.UpsamplingBilinear2d(scale_factor=2), which the official model uses.
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def build_universeg(widths: Sequence[int] = (64, 64, 64, 64), cross_impl: str = "split") -> UniverSeg:
    """Builds UniverSeg; the defaults are the official v1 architecture."""
    widths = tuple(widths)
    if len(widths) < 2 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ConfigError(f"--widths {widths} is invalid; give at least 2 positive integers, e.g. 64,64,64,64")
    if cross_impl not in CROSS_IMPLS:
        raise ConfigError(f"cross_impl {cross_impl!r} is unknown; use one of {', '.join(CROSS_IMPLS)}")
    return UniverSeg(widths, cross_impl)


def model_config(model: UniverSeg) -> dict:
    """A plain JSON-able dict from which `build_from_config` rebuilds the model."""
    return {"widths": list(model.widths), "cross_impl": model.cross_impl}


def build_from_config(cfg: Mapping) -> UniverSeg:
    if "widths" not in cfg:
        raise ConfigError(f"model config {dict(cfg)} has no 'widths'; expected e.g. {{'widths': [64, 64, 64, 64]}}")
    return build_universeg(cfg["widths"], cfg.get("cross_impl", "split"))
