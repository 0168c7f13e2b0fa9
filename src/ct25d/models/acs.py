"""Any 2D network as a 3D one that keeps every 2D weight: ACS convolutions (Yang et al., seed 002),
and the two counterparts the ACS paper compares them with.

Modes (input `(B, C, D, H, W)`):
- `acs`: each convolution's output channels are split into axial / coronal / sagittal parts whose
  2D kernel `(Kh, Kw)` becomes `(1, Kh, Kw)`, `(Kh, 1, Kw)` and `(Kh, Kw, 1)`; pools become cubic.
- `2.5d`: every kernel `(1, Kh, Kw)`, strides and pools in-plane only: each slice is processed
  alone, so the network equals slice-wise 2D application (the global pool then averages slices).
- `i3d`: every kernel inflated to `(Kh, Kh, Kw)` with the 2D weight repeated along depth and divided
  by `Kh` (Carreira & Zisserman), so a volume of identical slices gives the 2D response inside it.

Why our own converter: PyPI `ACSConv` 0.1.1 (the newest release) is broken on current PyTorch: its
norm-layer conversion builds constructor arguments from `co_varnames` and fails, it rejects grouped
convolutions (ResNeXt), non-square kernels and `padding='same'`, and its converter is not an
`nn.Module`. Here a converted layer keeps the 2D `weight` / `bias` parameters themselves (same names,
same shapes), so the parameter count is the 2D model's and a 2D state dict (ImageNet weights or our
Stage-1 `best.pt`) loads into the converted model unchanged.

Grouped and depthwise convolutions: the split happens inside every group when each group has at
least 3 output channels (ResNeXt), so each part is itself a grouped convolution with the original
groups; otherwise (depthwise) whole groups are assigned to the parts. Output channels are put back
in their 2D order, so the batch norm and the next layer see the channels their weights expect.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ct25d.errors import Ct25dError

MODES = ("acs", "2.5d", "i3d")
# Where the 2D kernel's unit axis goes in a 3D kernel (dims of the (out, in, D, H, W) weight).
_AXIAL, _CORONAL, _SAGITTAL = 2, 3, 4


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _thirds(n: int) -> tuple[int, int, int]:
    """The official ACS split of `n` into (axial, coronal, sagittal) counts."""
    return n // 3 + (1 if n % 3 else 0), n // 3 + (1 if n % 3 == 2 else 0), n // 3


def _insert(pair: tuple[int, int], axis: int, value: int) -> tuple[int, int, int]:
    """A 3D (D, H, W) tuple from a 2D (H, W) one with `value` at the unit axis `axis` (2, 3 or 4)."""
    out = list(pair)
    out.insert(axis - 2, value)
    return out[0], out[1], out[2]


class ConvFrom2d(nn.Module):
    """A `Conv2d` run on volumes; `weight` and `bias` are the 2D layer's own parameters."""

    def __init__(self, conv: nn.Conv2d, mode: str, name: str = "") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown conversion mode {mode!r}; expected one of {MODES}")
        if conv.padding_mode != "zeros":
            raise Ct25dError(f"{name}: padding_mode {conv.padding_mode!r} cannot be converted (only zeros)")
        self.weight, self.bias = conv.weight, conv.bias
        self.mode, self.groups, self.name = mode, conv.groups, name
        self.stride, self.dilation = _pair(conv.stride), _pair(conv.dilation)
        self.padding: str | tuple[int, int] = (
            conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        )
        if mode == "acs" and (self.stride[0] != self.stride[1] or self.dilation[0] != self.dilation[1]):
            raise Ct25dError(
                f"{name}: ACS needs equal strides and dilations on both axes (all three views must "
                f"give one output shape); got stride {self.stride}, dilation {self.dilation}"
            )
        self.keep_z = False  # set by `ct25d.models.volume.keep_depth`: stride 1 along z
        self.views = self._plan(conv.out_channels, conv.in_channels) if mode == "acs" else []
        if self.views:
            order = torch.cat([channels for _, channels, _, _ in self.views])
            self.register_buffer("inverse", torch.argsort(order), persistent=False)

    def _plan(self, out_channels: int, in_channels: int) -> list[tuple[int, torch.Tensor, slice, int]]:
        """(unit axis, output channels, input channels, groups) of each non-empty view."""
        g = self.groups
        per_group, in_per_group = out_channels // g, in_channels // g
        views = []
        if g == 1 or per_group >= 3:  # split inside every group: each view keeps all groups
            start = 0
            for axis, n in zip((_AXIAL, _CORONAL, _SAGITTAL), _thirds(per_group), strict=True):
                if n:
                    channels = torch.cat(
                        [torch.arange(j * per_group + start, j * per_group + start + n) for j in range(g)]
                    )
                    views.append((axis, channels, slice(None), g))
                start += n
        else:  # depthwise-like: whole groups go to one view each
            start = 0
            for axis, n in zip((_AXIAL, _CORONAL, _SAGITTAL), _thirds(g), strict=True):
                if n:
                    channels = torch.arange(start * per_group, (start + n) * per_group)
                    inputs = slice(start * in_per_group, (start + n) * in_per_group)
                    views.append((axis, channels, inputs, n))
                start += n
        return views

    def _view_args(self, axis: int) -> tuple[tuple[int, ...], str | tuple[int, ...], tuple[int, ...]]:
        """stride, padding, dilation of the view whose unit axis is `axis`."""
        stride = _insert(self.stride, axis, self.stride[0])
        dilation = _insert(self.dilation, axis, 1)
        padding = self.padding if isinstance(self.padding, str) else _insert(self.padding, axis, 0)
        return self._z(stride), padding, dilation

    def _z(self, stride: tuple[int, ...]) -> tuple[int, ...]:
        """A `(D, H, W)` stride with z kept when asked (`keep_z`)."""
        return (1, *stride[1:]) if self.keep_z else stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "2.5d":
            stride, padding, dilation = self._view_args(_AXIAL)
            stride = (1, *self.stride)
            return F.conv3d(x, self.weight.unsqueeze(2), self.bias, stride, padding, dilation, self.groups)
        if self.mode == "i3d":
            depth = self.weight.shape[2]
            weight = self.weight.unsqueeze(2).expand(-1, -1, depth, -1, -1) / depth
            padding = self.padding if isinstance(self.padding, str) else (self.padding[0], *self.padding)
            stride, dilation = self._z((self.stride[0], *self.stride)), (self.dilation[0], *self.dilation)
            return F.conv3d(x, weight, self.bias, stride, padding, dilation, self.groups)
        outs = []
        for axis, channels, inputs, groups in self.views:
            weight = self.weight.index_select(0, channels.to(x.device)).unsqueeze(axis)
            bias = None if self.bias is None else self.bias.index_select(0, channels.to(x.device))
            outs.append(F.conv3d(x[:, inputs], weight, bias, *self._view_args(axis), groups))
        shapes = {tuple(int(n) for n in o.shape[2:]) for o in outs}  # ints: a trace records sizes as tensors
        if len(shapes) > 1:
            raise Ct25dError(
                f"{self.name}: the ACS views give different output shapes {sorted(shapes)} for input "
                f"{tuple(x.shape[2:])}; padding {self.padding} is not 'same'-like for kernel "
                f"{tuple(self.weight.shape[2:])} (choose a volume size divisible by the strides)"
            )
        return torch.cat(outs, 1).index_select(1, self.inverse)

    def extra_repr(self) -> str:
        return f"{self.mode}, {tuple(self.weight.shape)}, stride={self.stride}, groups={self.groups}"


class BatchNormAct3d(nn.BatchNorm3d):
    """timm's `BatchNormAct2d` for volumes: same parameter and buffer names, then its drop and act."""

    def __init__(self, source: nn.BatchNorm2d) -> None:
        super().__init__(
            source.num_features, source.eps, source.momentum, source.affine, source.track_running_stats
        )
        self.drop, self.act = source.drop, source.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def _pool_geometry(
    kernel: int | tuple[int, ...],
    stride: int | tuple[int, ...] | None,
    padding: int | tuple[int, ...],
    mode: str,
) -> dict[str, tuple[int, int, int]]:
    k, p = _pair(kernel), _pair(padding)
    s = _pair(stride if stride is not None else kernel)
    if mode == "2.5d":
        return {"kernel_size": (1, *k), "stride": (1, *s), "padding": (0, *p)}
    return {"kernel_size": (k[0], *k), "stride": (s[0], *s), "padding": (p[0], *p)}


def _convert_module(module: nn.Module, mode: str, name: str) -> nn.Module | None:
    """The 3D replacement of one 2D layer, or None if it works on volumes as it is."""
    if isinstance(module, nn.Conv2d):
        return ConvFrom2d(module, mode, name)
    if isinstance(module, nn.BatchNorm2d):
        bn = (
            BatchNormAct3d(module)
            if hasattr(module, "act")
            else nn.BatchNorm3d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
        )
        bn.load_state_dict(module.state_dict())
        return bn.train(module.training)
    if isinstance(module, nn.MaxPool2d):
        if _pair(module.dilation) != (1, 1):
            raise Ct25dError(f"{name}: dilated max pooling has no 3D conversion here")
        return nn.MaxPool3d(
            **_pool_geometry(module.kernel_size, module.stride, module.padding, mode),
            dilation=1,
            ceil_mode=module.ceil_mode,
        )
    if isinstance(module, nn.AvgPool2d):
        return nn.AvgPool3d(
            **_pool_geometry(module.kernel_size, module.stride, module.padding, mode),
            ceil_mode=module.ceil_mode,
            count_include_pad=module.count_include_pad,
            divisor_override=module.divisor_override,
        )
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        size = _pair(module.output_size)
        if size != (1, 1):
            raise Ct25dError(f"{name}: adaptive pooling to {size} has no 3D counterpart here (only global)")
        return (
            nn.AdaptiveAvgPool3d(1) if isinstance(module, nn.AdaptiveAvgPool2d) else nn.AdaptiveMaxPool3d(1)
        )
    if type(module).__name__.endswith("2d") and not list(module.children()):
        raise Ct25dError(f"{name}: layer {type(module).__name__} has no 3D conversion")
    return None


def convert_to_3d(model: nn.Module, mode: str = "acs") -> nn.Module:
    """A 3D copy of `model` (the 2D model is left unchanged); see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"unknown conversion mode {mode!r}; expected one of {MODES}")
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            replacement = _convert_module(child, mode, full)
            if replacement is not None:
                setattr(module, child_name, replacement)
    return model
