"""EnCodec from scratch: the SEANet convolutional codec around residual vector quantization (§2.1).

MusicGen never sees raw audio: it models the discrete codes of an EnCodec model trained beforehand
and then frozen (paper §2.1, "Audio tokenization"). EnCodec (Défossez et al., 2022) is an
autoencoder with a quantizer in the middle:

    wav (B, 1, N) ──SEANet encoder (strided convs, ×hop fewer steps, + LSTM)──▶ z (B, D, T)
    z ──RVQ (rvq.py)──▶ codes (B, K, T)  and  ẑ (B, D, T) ──decoder (transposed convs)──▶ ŵav (B, 1, T·hop)

with T = ceil(N / hop) and hop = prod(ratios): 640 at 32 kHz, i.e. 50 frames per second, and
4 codebooks × 2048 entries = 4 · 11 bits · 50 Hz = 2.2 kbps. `EncodecConfig()` is that codec. Its
training losses live in losses.py (L1, multi-scale mel, the MS-STFT adversary). SEANet is laid out
and padded as HF transformers' EncodecModel, so the published MusicGen codec loads into it
(published/pretrained.py) and computes the same codes.

This file, in reading order: the config; SEANet's blocks, encoder and decoder (the paper's); the
tiny recipe's STFT encoder and inverse-STFT decoder (`EncodecConfig.spectral`, ours); the codec that
puts an encoder, the RVQ and a decoder together; saving and loading it.

Shape letters (DESIGN.md): B batch, C channels, L steps of a layer, N samples, K codebooks,
T frames, D latent dimension, S = 2T STFT frames.
Data flow: data.py clips → stage 1 (stages.py) trains this model → stage 2 (stages.py)
encodes the dataset once into codes for the LM → musicgen.py decodes generated codes back to audio.
"""
import functools
import math
import os
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from rvq import ResidualVectorQuantizer


@dataclass
class EncodecConfig:
    """The 32 kHz EnCodec of MusicGen. Every default is the paper's (EnCodec's where MusicGen is
    silent); train.TINY_CODEC lists what the tiny recipe changes and why."""
    sample_rate: int = 32000
    n_filters: int = 64                # channels of the first conv, doubled at every downsampling
    ratios: tuple = (8, 5, 4, 4)       # decoder upsampling ratios, reversed in the encoder: hop 640
    dimension: int = 128               # latent dimension D
    n_residual_layers: int = 1         # residual blocks per resolution
    lstm_layers: int = 2               # LSTM after the encoder and before the decoder
    # SEANet's layout (encodec.py), under the names of HF's EncodecConfig:
    kernel_size: int = 7               # first conv of the encoder and of the decoder
    last_kernel_size: int = 7          # last conv of the encoder and of the decoder
    residual_kernel_size: int = 3      # first conv of a residual block
    dilation_growth_rate: int = 2      # residual block j of a resolution dilates by rate^j
    compress: int = 2                  # residual bottleneck: dim -> dim // compress -> dim
    use_conv_shortcut: bool = False    # 1x1 conv instead of the identity on a residual skip (EnCodec: true_skip)
    pad_mode: str = "reflect"          # what SEANet's convs pad with: "reflect", "replicate" or "constant" (zeros)
    snake: bool = False                # Snake activations instead of ELU (ours; see Snake)
    spectral: bool = False             # STFT encoder + inverse-STFT decoder (ours; the STFT pair below)
    n_q: int = 4                       # codebooks K
    codebook_size: int = 2048          # entries per codebook
    ema_decay: float = 0.99            # codebook EMA (rvq.py)
    # Dead-code threshold in EMA assignments per batch: a code used less is re-drawn (rvq.py).
    dead_threshold: float = 2.0
    # P(a batch uses only the first k ~ U{1..K} codebooks): one model for several bitrates.
    quantizer_dropout: float = 0.0
    # Loss weights (losses.ReconstructionLoss; EnCodec balances the gradients instead, see there).
    l1_weight: float = 0.1             # waveform L1
    mel_weight: float = 2.0            # multi-scale mel
    pitch_weight: float = 0.0          # semitone spectrogram (ours; losses.SemitoneLoss)
    frequency_weight: float = 0.0      # instantaneous frequency (ours; losses.InstantaneousFrequencyLoss)
    commitment_weight: float = 1.0     # RVQ commitment
    mel_scales: tuple = (32, 64, 128, 256, 512, 1024, 2048)  # FFT sizes of the multi-scale mel loss
    adversarial: bool = True           # MS-STFT discriminator on/off (losses.py, part 2)
    adversarial_weight: float = 4.0
    feature_weight: float = 4.0        # feature matching
    disc_filters: int = 32
    disc_scales: tuple = (2048, 1024, 512, 256, 128)  # STFT sizes of the discriminator

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    # The spectral codec's STFT grid (its encoder and decoder below; also the instantaneous-frequency loss's).
    @property
    def stft_frames_per_latent(self) -> int:
        """STFT frames per latent frame (stacked by the encoder, unstacked by the decoder)."""
        return 2

    @property
    def stft_hop(self) -> int:
        return self.hop_length // self.stft_frames_per_latent

    @property
    def stft_n_fft(self) -> int:
        """A Hann window of 4 hops (75% overlap, so overlap-add reconstructs exactly)."""
        return 4 * self.stft_hop


# ==== SEANet: the paper's encoder and decoder =======================================================================
# SEANet: EnCodec's convolutional encoder and decoder (§2.1), padded exactly as EnCodec pads.
#
# The paper's codec (encodec.py) wraps the residual vector quantizer in these two networks:
#
#     wav (B, 1, N) ──conv k7 ─▶ [residual block, ELU, strided conv ×2 channels] per ratio 4, 4, 5, 8
#                   ──LSTM + skip, ELU, conv k7──▶ z (B, D, T),  T = ⌈N / hop⌉, hop = 4·4·5·8 = 640
#     z (B, D, T) ──conv k7, LSTM + skip──▶ [ELU, transposed conv ÷2 channels, residual block] per ratio
#                   8, 5, 4, 4 ──ELU, conv k7──▶ ŵav (B, 1, T·hop)
#
# Every conv pads its own input (PaddedConv1d): half of the kernel's reach on each side, reflecting the
# signal, plus what completes the last stride; every transposed conv trims its overhang the same way
# (TrimmedConvTranspose1d). This is EnCodec's non-causal layout, so with the same weights these modules
# compute what the published MusicGen codec computes (pretrained.encodec_from_hf, tests/test_encodec_hf.py),
# for any input length. The spectral codec below borrows
# activation, conv1d and LSTMSkip.


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


# ==== The tiny recipe's ends: an STFT encoder, an inverse-STFT decoder (ours) =======================================
# The tiny recipe's codec ends: an STFT encoder and an inverse-STFT decoder around EnCodec's RVQ.
#
# Deviation (ours, `EncodecConfig.spectral`, on in the tiny recipe; the paper's codec is SEANet,
# above). A SEANet encoder must learn its own filterbank with strided convs, and a SEANet decoder
# must learn to make a waveform with transposed convs; in a few CPU minutes ours rendered every note on
# a multiple of the 50 Hz frame rate, so melodies were lost (NOTES.md, "Spectral codec"). Here
#
#     wav (B, 1, N) ──|STFT| (2 frames per latent frame)──▶ convs + LSTM ──▶ z (B, D, T)
#     z ──RVQ──▶ ẑ ──convs + LSTM──▶ per STFT frame and bin: log magnitude, frequency offset δ
#       ──phase = running sum of the frequency──▶ inverse STFT ──▶ ŵav (B, 1, T·hop)
#
# The RVQ, the 50 Hz frame rate, the codes and everything downstream are EnCodec's. The decoder
# invents its own phase, so this codec trains without a waveform L1 and scores nothing in SI-SNR.


class SameConv1d(nn.Module):
    """Non-causal conv whose output has ceil(L / stride) steps: zero padding split around the input.

    For stride 1 the total padding is (k - 1)·dilation; for the downsampling convs (k = 2r, stride r)
    it is r, so an input of length L = n·r gives exactly n outputs. (SEANet pads as EnCodec does:
    PaddedConv1d above.)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1):
        super().__init__()
        self.conv = conv1d(in_channels, out_channels, kernel_size, stride, dilation)
        self.stride = stride
        self.padding = (kernel_size - 1) * dilation - (stride - 1) if stride == 1 else kernel_size - stride

    def forward(self, x):
        B, C, L = x.shape
        assert L % self.stride == 0, f"length {L} is not a multiple of the stride {self.stride}"
        x = F.pad(x, (self.padding // 2, self.padding - self.padding // 2))
        return self.conv(x)  # (B, C, L) -> (B, C', L / stride)


class ResidualBlock(nn.Module):
    """Residual unit: x + conv1(act(conv_k(act(x)))), with a channel bottleneck of 2 (SEANet's unit with
    zero-padded convs; SEANet itself uses SEANetResidualBlock)."""

    def __init__(self, cfg, dim, kernel_size=3, dilation=1):
        super().__init__()
        self.block = nn.Sequential(activation(cfg), SameConv1d(dim, dim // 2, kernel_size, dilation=dilation),
                                   activation(cfg), SameConv1d(dim // 2, dim, 1))

    def forward(self, x):
        return x + self.block(x)  # (B, C, L) -> (B, C, L); EnCodec's "true skip" (identity shortcut)


class STFTEncoder(nn.Module):
    """wav (B, 1, N) -> z (B, D, T): log-magnitude STFT, 2 STFT frames stacked per latent frame, then
    convs and an LSTM at the frame rate. SEANet learns its own filterbank with strided convs, which
    takes far more steps than a CPU budget allows before pitch shows up in the latents; an STFT hands
    the encoder every harmonic's frequency from step 0."""

    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        channels = cfg.n_filters * 2 ** len(cfg.ratios)
        self.hop, self.n_fft = cfg.stft_hop, cfg.stft_n_fft
        self.n_freqs = self.n_fft // 2 + 1
        self.per_frame = cfg.stft_frames_per_latent  # STFT frames per latent frame (2)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.layers = nn.Sequential(
            SameConv1d(self.per_frame * self.n_freqs, channels, 3),
            *[ResidualBlock(cfg, channels, dilation=d) for d in (1, 3)],
            LSTMSkip(channels, cfg.lstm_layers), activation(cfg), SameConv1d(channels, cfg.dimension, 7))

    def forward(self, wav):
        B, _, N = wav.shape
        T = N // (self.per_frame * self.hop)
        # Zero padding at the ends (not reflection): works for clips shorter than half a window.
        spec = torch.stft(wav[:, 0], self.n_fft, self.hop, window=self.window, pad_mode="constant",
                          return_complex=True).abs()[..., :T * self.per_frame]  # (B, 1, N) -> (B, n_freqs, 2T)
        x = (torch.log(spec + 1e-4) + 4) / 4                 # log magnitude, roughly in [-1, 2]
        x = x.view(B, self.n_freqs, T, self.per_frame).transpose(2, 3).reshape(B, self.per_frame * self.n_freqs, T)
        return self.layers(x)                                # (B, 2·n_freqs, T) -> (B, D, T)


class ISTFTDecoder(nn.Module):
    """z (B, D, T) -> wav (B, 1, T·hop) through an inverse STFT (after Vocos, Siuzdenko et al., 2023).

    Why not SEANet's transposed convs here: with quantized latents and a phase-blind mel loss, our
    few-minute SEANet decoder settled on repeating one waveform per latent frame, i.e. a comb of
    harmonics of the 50 Hz frame rate (NOTES.md, "Spectral codec"). Here every
    STFT frame gets, per frequency bin k, a log magnitude and an instantaneous frequency f_k = (k + δ_k)·sr/n_fft,
    δ_k ∈ (-1, 1) bins (see forward); the phase is the running sum of the frequency,

        φ_k(s) = π·k + Σ_{s' ≤ s} 2π (k + δ_k(s')) · hop / n_fft,

    so a held note needs the *same* output every frame (as a phase-blind loss wants) and still rings
    at its exact pitch (GANSynth's instantaneous-frequency idea, Engel et al., 2019). π·k lines the bins
    up as in the STFT of a sinusoid with a centred window. The phase starts at 0: the decoder does not
    reproduce the input's phase, only its spectrum (SI-SNR is meaningless for this codec).
    """

    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        channels = cfg.n_filters * 2 ** len(cfg.ratios)
        self.hop, self.n_fft = cfg.stft_hop, cfg.stft_n_fft
        self.n_freqs = self.n_fft // 2 + 1
        self.per_frame = cfg.stft_frames_per_latent
        self.layers = nn.Sequential(SameConv1d(cfg.dimension, channels, 7), LSTMSkip(channels, cfg.lstm_layers),
                                    *[ResidualBlock(cfg, channels, dilation=d) for d in (1, 3)], activation(cfg))
        # Per latent frame and STFT frame: n_freqs log magnitudes and n_freqs frequency offsets.
        self.head = nn.Conv1d(channels, 2 * self.n_freqs * self.per_frame, 1)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("bins", torch.arange(self.n_freqs, dtype=torch.float32)[:, None], persistent=False)

    def synthesize(self, log_magnitude, delta):
        """log_magnitude, delta (B, n_freqs, S) -> wav (B, 1, S·hop): the equation above, then torch.istft."""
        B, n_freqs, S = log_magnitude.shape
        magnitude = torch.exp(log_magnitude.clamp(max=7.0))  # clamp: no overflow early in training
        # forward passes δ within ±1 bin; the clamp only guards direct callers (e.g. exact offsets in tests)
        omega = 2 * math.pi * (self.bins + delta.clamp(-2.0, 2.0)) * self.hop / self.n_fft  # radians per STFT hop
        phase = math.pi * self.bins + torch.cumsum(omega, dim=-1)                           # (B, n_freqs, S)
        wav = torch.istft(torch.polar(magnitude, phase), self.n_fft, self.hop, window=self.window, length=S * self.hop)
        return wav[:, None]                                   # (B, S·hop) -> (B, 1, S·hop)

    def forward(self, z):
        B, D, T = z.shape
        y = self.head(self.layers(z))                         # (B, D, T) -> (B, 2·n_freqs·2, T)
        y = y.view(B, 2 * self.n_freqs, self.per_frame, T).transpose(2, 3).reshape(B, 2 * self.n_freqs, T * self.per_frame)
        log_magnitude, raw_delta = y.chunk(2, dim=1)          # (B, n_freqs, S) each, S = 2T STFT frames
        # δ = tanh(raw) ∈ (-1, 1) bins: smooth, so its gradient never dies, and within one bin. With
        # hop = n_fft / 4, δ = ±2 adds ±π of phase per hop: a bin's consecutive frames overlap in
        # antiphase and cancel, which a looser bound let the decoder use as a second volume knob,
        # blurring held notes by a semitone (NOTES.md, "Frequency offsets within one bin"). A
        # sinusoid's bins ±1 around its frequency carry most of its energy.
        return self.synthesize(log_magnitude, torch.tanh(raw_delta))


# ==== The codec: encoder, RVQ, decoder ==============================================================================
class EncodecModel(nn.Module):
    """Encoder + RVQ + decoder, with the public names of DESIGN.md (sample_rate, frame_rate, n_q,
    codebook_size, encode, decode) and atomic save / weights-only load.

    The encoder and decoder are SEANet's (the paper's), or the STFT pair above when cfg.spectral (the
    tiny recipe's); everything between them is the same."""

    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        assert cfg.n_filters * 2 ** len(cfg.ratios) >= 2, "too few filters"
        self.cfg = cfg
        self.encoder = STFTEncoder(cfg) if cfg.spectral else SEANetEncoder(cfg)
        self.quantizer = ResidualVectorQuantizer(cfg.dimension, cfg.n_q, cfg.codebook_size,
                                                 cfg.quantizer_dropout, cfg.ema_decay, cfg.dead_threshold)
        self.decoder = ISTFTDecoder(cfg) if cfg.spectral else SEANetDecoder(cfg)
        self.sample_rate, self.n_q, self.codebook_size = cfg.sample_rate, cfg.n_q, cfg.codebook_size
        self.hop_length, self.frame_rate = cfg.hop_length, cfg.frame_rate

    @property
    def bitrate(self) -> float:
        """Bits per second: each frame sends n_q indices of log2(codebook_size) bits (paper: 2.2 kbps)."""
        return self.quantizer.bitrate(self.frame_rate)

    def _pad(self, wav):
        """(B, C, N) -> the encoder's input. SEANet's convs pad each layer themselves (PaddedConv1d), as
        EnCodec does, so it takes (B, 1, N) as is; the STFT encoder needs whole frames, so its input gets
        zeros at the end up to (B, 1, T·hop), T = ceil(N / hop)."""
        B, C, N = wav.shape
        if C != 1:
            raise ValueError(f"the codec takes mono audio (B, 1, N), got {C} channels")
        if not self.cfg.spectral:
            return wav
        T = math.ceil(N / self.hop_length)
        return F.pad(wav, (0, T * self.hop_length - N))

    def forward(self, wav, n_q=None, quantize=True):
        """Training pass: wav (B, 1, N) -> (reconstruction (B, 1, T·hop), codes (B, k, T), commitment).
        quantize=False skips the RVQ (codes None, commitment 0): the quantizer warm-up of train.py."""
        z = self.encoder(self._pad(wav))                       # (B, 1, T·hop) -> (B, D, T)
        if not quantize:
            return self.decoder(z), None, z.new_zeros(())
        z_hat, codes, commitment, _ = self.quantizer(z, n_q)   # (B, D, T) -> (B, D, T), (B, k, T)
        return self.decoder(z_hat), codes, commitment          # (B, D, T) -> (B, 1, T·hop)

    @torch.no_grad()
    def encode(self, wav, n_q=None):
        """wav (B, 1, N) -> codes (B, K, T), T = ceil(N / hop). Never updates the codebooks."""
        return self.quantizer.encode(self.encoder(self._pad(wav)), n_q)

    @functools.cached_property  # structural: measured once per model
    def lookahead_frames(self) -> int:
        """How many of an encoding's last frames depend on audio *after* its end.

        The encoder is non-causal (centred STFT windows, "same" convs; only its LSTM runs forward in
        time), so frame t also sees a few frames to its right. At the end of a clip those are padding
        (silence for the STFT encoder, a mirror image of the last samples for SEANet): encoding a
        prompt cut from the middle of a note gives last frames that say "the note stops here"
        (NOTES.md, "Continuation drops look-ahead frames"). Measured, not derived, so it holds for both
        encoders: change only the last frame of a noise signal and count the earlier frames whose
        latent moves.
        """
        T = 64
        generator = torch.Generator().manual_seed(0)
        wav = torch.randn(1, 1, T * self.hop_length, generator=generator)
        changed = wav.clone()
        changed[..., -self.hop_length:] = torch.randn(self.hop_length, generator=generator)
        device = next(self.parameters()).device
        with torch.no_grad():
            z, z_changed = (self.encoder(w.to(device)) for w in (wav, changed))  # (1, D, T) each
        moved = (z - z_changed).abs().amax(dim=1)[0] > 0                        # (T,)
        return T - 1 - int(moved.nonzero()[0])  # the last frame itself does not count

    @torch.no_grad()
    def decode(self, codes):
        """codes (B, k, T), k ≤ K (fewer codebooks = lower bitrate) -> wav (B, 1, T·hop)."""
        B, K, T = codes.shape
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]")
        return self.decoder(self.quantizer.decode(codes))

    def save(self, path, step=0, **extra):
        """One self-describing dict (config, weights, step, + optimizer/RNG for resuming), written to a
        temp file and renamed, so an interrupted save never destroys the previous checkpoint."""
        ckpt = dict(config=asdict(self.cfg), model=self.state_dict(), step=step, **extra)
        tmp = f"{path}.tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, path)

    @classmethod
    def from_checkpoint(cls, ckpt, where="checkpoint"):
        """A model in eval mode from a checkpoint dict (see save); one-line ValueError if it does not fit."""
        try:
            model = cls(EncodecConfig(**ckpt["config"]))
            model.load_state_dict(ckpt["model"])
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise ValueError(f"{where}: not a readable codec checkpoint ({type(error).__name__}: {first_line})") from None
        return model.eval()


def read_checkpoint(path, what="codec"):
    """torch.load with weights_only=True (a checkpoint can never run code); one-line errors."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {what} checkpoint here (run `python train.py` first)") from None
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not a readable {what} checkpoint ({type(error).__name__}: {first_line})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a {what} checkpoint (no config / model entries)")
    return ckpt


def load_codec(path, device="cpu"):
    """-> (codec in eval mode, checkpoint dict) from a file written by EncodecModel.save."""
    ckpt = read_checkpoint(path, "codec")
    return EncodecModel.from_checkpoint(ckpt, where=str(path)).to(device), ckpt
