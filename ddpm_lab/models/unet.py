"""The DDPM U-Net (Ho et al., 2020): time-conditioned residual blocks, skip connections, self-attention.

Plain PyTorch. ``UNet(x_t, t) -> prediction`` with the same shape as ``x_t``; a class-conditional U-Net
(``num_classes > 0``) takes ``UNet(x_t, t, y)``, a learned class embedding added to the time embedding, with one
extra "null" class (index ``num_classes``, also what ``y=None`` means) for classifier-free guidance (Ho & Salimans,
2022). A U-Net trained with non-leaky augmentation (``augment_dim > 0``, EDM) also takes
``augment_labels=`` (N, augment_dim): their linear embedding is added to the time embedding; none (sampling) is
all zeros, which adds nothing. ``null_class=False`` (a model imported from diffusers without one) has the class
rows alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lab.errors import ConfigError, check_choice, check_flag, check_number
from ddpm_lab.models.dropout import Dropout

__all__ = ["UNet", "sinusoidal_embedding"]


def sinusoidal_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0, cos_first: bool = False
) -> torch.Tensor:
    """Transformer-style embedding of (integer) timesteps: [sin(t·ω_i), cos(t·ω_i)], ω_i = max_period^(−i/(half−s)).

    ``freq_shift`` s = 1 and sin first is Ho et al.'s original code (diffusers' ``freq_shift=1``,
    ``flip_sin_to_cos=False``); ``cos_first`` gives [cos, sin] (diffusers' ``flip_sin_to_cos=True``).
    """
    half = dim // 2
    # the operations in this order keep default embeddings bit-identical to earlier versions
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - freq_shift)
    )
    args = t.float()[:, None] * freqs[None]
    parts = [torch.cos(args), torch.sin(args)] if cos_first else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(channels: int, groups: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the projected time embedding, GroupNorm → SiLU → dropout → conv, residual."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = _norm(out_ch, groups, eps)
        self.dropout = Dropout(dropout)  # nn.Dropout, with a faster mask on CPUs
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, with ``scaled_dot_product_attention``."""

    def __init__(self, channels: int, num_heads: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        if channels % num_heads:
            raise ConfigError(
                f"model.num_heads={num_heads} does not divide the {channels} channels of an attention block"
            )
        self.num_heads = num_heads
        self.norm = _norm(channels, groups, eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (b, heads, hw, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Strided 3×3 conv. ``padding=0`` pads only right and bottom by one first, as Ho et al.'s TensorFlow code."""

    def __init__(self, channels: int, padding: int = 1) -> None:
        super().__init__()
        self.pad_right = padding == 0
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.pad_right else x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM U-Net.

    Args:
        in_channels: image channels (1 for MNIST, 3 for RGB).
        image_size: side of the (square) input; must halve evenly ``len(channel_mults) − 1`` times.
        base_channels: width of the first level; level i has ``base_channels · channel_mults[i]``.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sides (e.g. 16 for 32×32 input) that get self-attention.
        dropout: dropout inside residual blocks.
        num_heads: attention heads.
        groups: GroupNorm groups (reduced to a divisor of each width).
        out_channels: defaults to ``in_channels``.
        num_classes: 0 (unconditional) or the number of classes of a class-conditional model; set from the
            dataset by ``conditioning=class``. Adds ``class_emb`` with ``num_classes + 1`` rows (the last: null).
        null_class: whether ``class_emb`` has the null row (guidance and unconditional samples need it); False
            only for models trained elsewhere without one.
        norm_eps: GroupNorm epsilon (Ho et al.'s models: 1e-6).
        time_freq_shift: s in the time embedding's frequencies max_period^(−i/(half−s)) (Ho et al.: 1).
        time_cos_first: time embedding as [cos, sin] instead of [sin, cos].
        downsample_padding: padding of the strided downsampling conv; 0 pads right/bottom only (Ho et al.).
        augment_dim: length of the augmentation labels (``ddpm_lab.data.augment``); 0: none. Set from
            ``dataset.augment`` by the config, not by hand. Adds ``augment_emb``, a linear map without bias (EDM's
            ``map_augment``), so zero labels add exactly nothing.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_heads: int = 1,
        groups: int = 32,
        out_channels: int | None = None,
        num_classes: int = 0,
        norm_eps: float = 1e-5,
        time_freq_shift: float = 0.0,
        time_cos_first: bool = False,
        downsample_padding: int = 1,
        augment_dim: int = 0,
        null_class: bool = True,
    ) -> None:
        super().__init__()
        sizes = {
            "in_channels": in_channels,
            "image_size": image_size,
            "base_channels": base_channels,
            "num_res_blocks": num_res_blocks,
            "num_heads": num_heads,
            "groups": groups,
        }
        in_channels, image_size, base_channels, num_res_blocks, num_heads, groups = (
            check_number(value, f"model.{key}", int, low=1) for key, value in sizes.items()
        )
        dropout = check_number(dropout, "model.dropout", float, 0, 1, high_open=True)
        out_channels = check_number(out_channels, "model.out_channels", int, low=1, optional=True)
        self.num_classes = check_number(num_classes, "model.num_classes", int, low=0)
        self.augment_dim = check_number(augment_dim, "model.augment_dim", int, low=0)
        self.null_class = check_flag(null_class, "model.null_class")
        norm_eps = check_number(norm_eps, "model.norm_eps", float, low=0, low_open=True)
        self.time_freq_shift = check_number(time_freq_shift, "model.time_freq_shift", float, low=0)
        if self.time_freq_shift >= base_channels // 2:
            raise ConfigError(f"model.time_freq_shift={time_freq_shift} must be below base_channels/2")
        self.time_cos_first = check_flag(time_cos_first, "model.time_cos_first")
        check_choice(downsample_padding, "model.downsample_padding", (0, 1))
        channel_mults, resolutions = self.check_layout(image_size, channel_mults, attention_resolutions)
        self.in_channels, self.image_size = in_channels, image_size
        self.out_channels = out_channels or in_channels
        self.base_channels = base_channels
        temb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        if self.num_classes:  # only then: an unconditional U-Net keeps its modules and state_dict keys
            self.class_emb = nn.Embedding(self.num_classes + int(self.null_class), temb_dim)
        if self.augment_dim:  # likewise: only a U-Net trained with augmentation has it
            self.augment_emb = nn.Linear(self.augment_dim, temb_dim, bias=False)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def block(cin: int, cout: int, res: int) -> nn.ModuleList:
            layers: list[nn.Module] = [ResBlock(cin, cout, temb_dim, dropout, groups, norm_eps)]
            if res in attention_resolutions:
                layers.append(AttentionBlock(cout, num_heads, groups, norm_eps))
            return nn.ModuleList(layers)

        self.down = nn.ModuleList()
        skip_channels, ch = [base_channels], base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, base_channels * mult, resolutions[level]))
                ch = base_channels * mult
                skip_channels.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(ch, downsample_padding)]))
                skip_channels.append(ch)

        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, temb_dim, dropout, groups, norm_eps),
                AttentionBlock(ch, num_heads, groups, norm_eps),
                ResBlock(ch, ch, temb_dim, dropout, groups, norm_eps),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skip_channels.pop(), base_channels * mult, resolutions[level]))
                ch = base_channels * mult
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))

        self.norm_out = _norm(ch, groups, norm_eps)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def check_image_size(image_size: int, levels: int) -> None:
        factor = 2 ** (levels - 1)
        if image_size < factor or image_size % factor:
            raise ConfigError(
                f"image_size={image_size} cannot be halved {levels - 1} times evenly by a U-Net with "
                f"{levels} levels: use an image_size divisible by {factor} (e.g. dataset.image_size="
                f"{max(factor, round(image_size / factor) * factor)}) or fewer model.channel_mults"
            )

    @classmethod
    def check_layout(
        cls, image_size: int, channel_mults: Sequence[int], attention_resolutions: Sequence[int]
    ) -> tuple[tuple[int, ...], list[int]]:
        """The levels' multipliers and feature-map sides, checked: the input halves evenly, attention sides occur."""
        if isinstance(channel_mults, (str, int, float)) or not channel_mults:
            raise ConfigError(f"model.channel_mults must be a non-empty list of integers, got {channel_mults!r}")
        channel_mults = tuple(check_number(m, "model.channel_mults", int, low=1) for m in channel_mults)
        if isinstance(attention_resolutions, (str, int, float)):
            raise ConfigError(
                f"model.attention_resolutions must be a list of feature-map sides, got {attention_resolutions!r}"
            )
        cls.check_image_size(image_size, len(channel_mults))
        resolutions = [image_size // 2**i for i in range(len(channel_mults))]
        unknown = sorted(set(attention_resolutions) - set(resolutions))
        if unknown:
            raise ConfigError(
                f"model.attention_resolutions {unknown} never occur for image_size={image_size}: "
                f"this U-Net's feature maps are {resolutions}; pick from those"
            )
        return channel_mults, resolutions

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def class_embedding(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """The class embedding of labels ``y`` (None: the null class ``num_classes`` for every sample)."""
        if y is None:
            if not self.null_class:
                raise ValueError("this U-Net has no null class (null_class=False): pass the class labels y")
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        elif y.ndim == 0:
            y = y.expand(batch)
        return self.class_emb(y.to(device=device, dtype=torch.long))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prediction for ``x`` at timesteps ``t``; ``y``: class labels of a class-conditional U-Net;
        ``augment_labels``: what augmentation was applied to each image (training only; None: none)."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = sinusoidal_embedding(
            t, self.base_channels, freq_shift=self.time_freq_shift, cos_first=self.time_cos_first
        )
        temb = self.time_mlp(temb.to(x.dtype))
        if self.num_classes:
            temb = temb + self.class_embedding(y, x.shape[0], x.device).to(temb.dtype)
        elif y is not None:
            raise ValueError("this U-Net is unconditional (num_classes=0): it takes no class labels y")
        if augment_labels is not None:
            if not self.augment_dim:
                raise ValueError("this U-Net was built without augment_dim: it takes no augmentation labels")
            temb = temb + self.augment_emb(augment_labels.to(device=x.device, dtype=temb.dtype))
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, temb)
            skips.append(h)
        h = self._run(self.mid, h, temb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layers, h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))
