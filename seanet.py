"""SEANet: EnCodec's convolutional encoder and decoder (§2.1), padded exactly as EnCodec pads.

The paper's codec (encodec.py) wraps the residual vector quantizer in these two networks:

    wav (B, 1, N) ──conv k7 ─▶ [residual block, ELU, strided conv ×2 channels] per ratio 4, 4, 5, 8
                  ──LSTM + skip, ELU, conv k7──▶ z (B, D, T),  T = ⌈N / hop⌉, hop = 4·4·5·8 = 640
    z (B, D, T) ──conv k7, LSTM + skip──▶ [ELU, transposed conv ÷2 channels, residual block] per ratio
                  8, 5, 4, 4 ──ELU, conv k7──▶ ŵav (B, 1, T·hop)

Every conv pads its own input (PaddedConv1d): half of the kernel's reach on each side, reflecting the
signal, plus what completes the last stride; every transposed conv trims its overhang the same way
(TrimmedConvTranspose1d). This is EnCodec's non-causal layout, so with the same weights these modules
compute what the published MusicGen codec computes (EncodecModel.from_hf, tests/test_encodec_hf.py),
for any input length. The spectral codec (spectral_codec.py) borrows activation and LSTMSkip.

Shape letters (DESIGN.md): B batch, C channels, L steps of a layer, N samples, D latent dimension,
T frames. `cfg` is an encodec.EncodecConfig.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


# ---- activation, weight norm, LSTM (the spectral codec uses these too) ---------------------------------
class Snake(nn.Module):
    """Snake activation x + sin²(αx) / α (Ziyin et al., 2020), with a learned α.

    Deviation (ours, `EncodecConfig.snake`): EnCodec uses ELU. DAC (Kumar et al., 2023) showed that a
    periodic activation helps a SEANet-style decoder produce pitched audio (NOTES.md, "Snake activation").
    DAC learns one α per channel; one per layer is enough here. Shape-preserving: (B, C, L).
    """

    def __init__(self):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(()))  # α = 1 at initialisation, kept positive

    def forward(self, x):
        alpha = self.log_alpha.exp()
        return x + torch.sin(alpha * x).pow(2) / alpha


def activation(cfg, inplace=False) -> nn.Module:
    """The codec's nonlinearity. `inplace`: the ELU overwrites its input, for an input nothing else reads
    (a conv's or a residual sum's fresh output); at 32 kHz such a (B, C, N) tensor is tens of MB, and a
    new one costs more to allocate (page faults) than the ELU itself. Snake always makes a new tensor."""
    return Snake() if cfg.snake else nn.ELU(inplace=inplace)


def conv1d(in_channels, out_channels, kernel_size, stride=1, dilation=1):
    """Weight-normalised conv (EnCodec uses weight norm everywhere in SEANet). Padding is done by the caller."""
    return weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation))


class LSTMSkip(nn.Module):
    """LSTM over time with a skip connection: long-range context at the coarsest resolution."""

    def __init__(self, dim, n_layers):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, n_layers, batch_first=True)

    def forward(self, x):
        y, _ = self.lstm(x.transpose(1, 2))  # (B, C, T) -> (B, T, C)
        return x + y.transpose(1, 2)         # -> (B, C, T)


# ---- EnCodec's padded convs ------------------------------------------------------------------------------
def pad1d(x, left: int, right: int, mode: str):
    """F.pad (B, C, L) -> (B, C, left + L + right), except that it can also reflect an input no longer
    than the padding (EnCodec's workaround): zeros are appended first, so there is something to reflect
    the right side from, and cut off again afterwards."""
    if left == right == 0:
        return x  # a 1x1 conv pads nothing: no copy
    extra = max(left, right) - x.shape[-1] + 1 if mode == "reflect" else 0
    if extra <= 0:
        return F.pad(x, (left, right), mode)
    return F.pad(F.pad(x, (0, extra)), (left, right), mode)[..., :-extra]


class PaddedConv1d(nn.Module):
    """SEANet's non-causal conv (EnCodec's SConv1d): (B, C, L) -> (B, C', ceil(L / s)) for stride s.

    With the span of the dilated kernel k' = (k - 1)·dilation + 1 the input is padded by

        p = k' - s      left: p - ⌊p/2⌋      right: ⌊p/2⌋ + (⌈L/s⌉·s - L)

    i.e. the larger half on the left, plus "extra" padding on the right that completes the last stride,
    so no sample is dropped and the conv yields (p + ⌈L/s⌉·s - k') / s + 1 = ⌈L/s⌉ outputs. Stride 1
    keeps the length (k = 7: 3 + 3); the stride-5 conv (k = 10) pads 3 left and 2 right. The padding
    reflects the signal (`pad_mode`) instead of adding silence, which would sound like a note stopping.

    Args:
        cfg: the codec's config (its pad_mode). in_channels, out_channels: C, C'.
        kernel_size, stride, dilation: k, s and the dilation of the conv.
    """

    def __init__(self, cfg, in_channels, out_channels, kernel_size, stride=1, dilation=1):
        super().__init__()
        self.conv = conv1d(in_channels, out_channels, kernel_size, stride, dilation)
        self.stride, self.pad_mode = stride, cfg.pad_mode
        self.padding = (kernel_size - 1) * dilation + 1 - stride  # p

    def forward(self, x):
        B, C, L = x.shape
        extra = math.ceil(L / self.stride) * self.stride - L
        right = self.padding // 2
        x = pad1d(x, self.padding - right, right + extra, self.pad_mode)  # -> (B, C, p + ⌈L/s⌉·s)
        return self.conv(x)                                              # -> (B, C', ⌈L/s⌉)


class TrimmedConvTranspose1d(nn.Module):
    """SEANet's non-causal transposed conv (EnCodec's SConvTranspose1d), kernel 2r, stride r:
    (B, C, L) -> (B, C', L·r).

    A transposed conv writes (L - 1)·r + k samples, p = k - r more than L·r. They are trimmed the way
    PaddedConv1d pads: right ⌊p/2⌋, left p - ⌊p/2⌋ (the larger half on the left).
    """

    def __init__(self, in_channels, out_channels, ratio):
        """in_channels, out_channels: C, C'; ratio: r, the upsampling factor."""
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(in_channels, out_channels, 2 * ratio, stride=ratio))
        self.trim = ratio  # p = k - r = 2r - r

    def forward(self, x):
        # The same sum as self.conv(x), which torch runs as a 2-D transposed conv on (B, C, 1, L) and
        # then converts from the channels-last layout its kernel writes; called that way directly,
        # with a channels-last input, it is faster at 32 kHz (NOTES.md, "Decoding at the real size").
        x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (B, C, L) -> (B, C, 1, L)
        y = F.conv_transpose2d(x, self.conv.weight.unsqueeze(2), self.conv.bias, stride=(1, self.conv.stride[0]))
        right = self.trim // 2
        y = y[..., 0, self.trim - right:y.shape[-1] - right]  # (B, C', 1, L·r + p) -> (B, C', L·r)
        return y.contiguous()  # back to row-major (B, C', L·r): the padding and residual sum after it read it faster


class SEANetResidualBlock(nn.Module):
    """SEANet residual unit: shortcut(x) + conv_1(act(conv_k,d(act(x)))), k = residual_kernel_size,
    dilation d, through a bottleneck of dim // compress channels. The shortcut is the identity
    (EnCodec's "true skip"; MusicGen's codec) or a 1x1 conv (`use_conv_shortcut`)."""

    def __init__(self, cfg, dim, dilation=1):
        super().__init__()
        hidden = dim // cfg.compress
        self.block = nn.Sequential(
            activation(cfg), PaddedConv1d(cfg, dim, hidden, cfg.residual_kernel_size, dilation=dilation),
            activation(cfg, inplace=True), PaddedConv1d(cfg, hidden, dim, 1))
        self.shortcut = PaddedConv1d(cfg, dim, dim, 1) if cfg.use_conv_shortcut else nn.Identity()

    def forward(self, x):
        # The branch's output is a fresh tensor: the shortcut is added into it rather than into a new one.
        return self.block(x).add_(self.shortcut(x))  # (B, C, L) -> (B, C, L)


class SEANetEncoder(nn.Module):
    """wav (B, 1, N) -> z (B, D, ⌈N / hop⌉). Channels double at each downsampling: n_filters · 2^i."""

    def __init__(self, cfg):
        super().__init__()
        layers = [PaddedConv1d(cfg, 1, cfg.n_filters, cfg.kernel_size)]
        channels = cfg.n_filters
        for ratio in reversed(cfg.ratios):  # encoder: small strides first (4, 4, 5, 8)
            layers += [SEANetResidualBlock(cfg, channels, dilation=cfg.dilation_growth_rate ** j)
                       for j in range(cfg.n_residual_layers)]
            # (B, C, L) -> (B, 2C, ⌈L / ratio⌉)
            layers += [activation(cfg, inplace=True),
                       PaddedConv1d(cfg, channels, 2 * channels, 2 * ratio, stride=ratio)]
            channels *= 2
        layers += [LSTMSkip(channels, cfg.lstm_layers), activation(cfg, inplace=True),
                   PaddedConv1d(cfg, channels, cfg.dimension, cfg.last_kernel_size)]
        self.layers = nn.Sequential(*layers)

    def forward(self, wav):
        return self.layers(wav)


class SEANetDecoder(nn.Module):
    """z (B, D, T) -> wav (B, 1, T·hop): the encoder mirrored, transposed convs halve the channels."""

    def __init__(self, cfg):
        super().__init__()
        channels = cfg.n_filters * 2 ** len(cfg.ratios)
        layers = [PaddedConv1d(cfg, cfg.dimension, channels, cfg.kernel_size), LSTMSkip(channels, cfg.lstm_layers)]
        for ratio in cfg.ratios:  # decoder: large strides first (8, 5, 4, 4)
            # (B, C, L) -> (B, C / 2, L·ratio)
            layers += [activation(cfg, inplace=True), TrimmedConvTranspose1d(channels, channels // 2, ratio)]
            channels //= 2
            layers += [SEANetResidualBlock(cfg, channels, dilation=cfg.dilation_growth_rate ** j)
                       for j in range(cfg.n_residual_layers)]
        layers += [activation(cfg, inplace=True), PaddedConv1d(cfg, channels, 1, cfg.last_kernel_size)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z):
        return self.layers(z)
