"""EnCodec from scratch: the SEANet convolutional codec around residual vector quantization (§2.1).

MusicGen never sees raw audio: it models the discrete codes of an EnCodec model trained beforehand
and then frozen (paper §2.1, "Audio tokenization"). EnCodec (Défossez et al., 2022) is an
autoencoder with a quantizer in the middle:

    wav (B, 1, N) ──encoder (strided convs, ×hop fewer steps, + LSTM)──▶ z (B, D, T)
    z ──RVQ (rvq.py)──▶ codes (B, K, T)  and  ẑ (B, D, T) ──decoder (transposed convs)──▶ ŵav (B, 1, T·hop)

with T = ceil(N / hop) and hop = prod(ratios): 640 at 32 kHz, i.e. 50 frames per second, and
4 codebooks × 2048 entries = 4 · 11 bits · 50 Hz = 2.2 kbps. `EncodecConfig()` is that codec. Its
training losses live in losses.py (L1, multi-scale mel) and discriminator.py (MS-STFT adversary).

The tiny recipe swaps the two ends for an STFT encoder and an inverse-STFT decoder (spectral_codec.py,
`EncodecConfig.spectral`); the RVQ, the frame rate and everything downstream stay the same.

Shape letters (DESIGN.md): B batch, C channels, N samples, K codebooks, T frames, D latent dimension.
Data flow: data.py clips → train.py stage 1 trains this model → train.py stage 2 encodes the dataset
once into codes for the LM → musicgen.py decodes generated codes back to audio.
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
    snake: bool = False                # Snake activations instead of ELU (ours; see Snake)
    spectral: bool = False             # STFT encoder + inverse-STFT decoder (ours; spectral_codec.py)
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
    adversarial: bool = True           # MS-STFT discriminator on/off (discriminator.py)
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

    # The spectral codec's STFT grid (spectral_codec.py; also the instantaneous-frequency loss's).
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


# ==== SEANet: the convolutional encoder and decoder ====================================================
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


def activation(cfg) -> nn.Module:
    return Snake() if cfg.snake else nn.ELU()


def conv1d(in_channels, out_channels, kernel_size, stride=1, dilation=1):
    """Weight-normalised conv (EnCodec uses weight norm everywhere in SEANet). Padding is done by the caller."""
    return weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation))


class SameConv1d(nn.Module):
    """Non-causal conv whose output has ceil(L / stride) steps: zero padding split around the input.

    For stride 1 the total padding is (k - 1)·dilation; for the downsampling convs (k = 2r, stride r)
    it is r, so an input of length L = n·r gives exactly n outputs.
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


class UpConv1d(nn.Module):
    """Transposed conv, kernel 2r, stride r: (B, C, L) -> (B, C', L·r) after trimming r samples."""

    def __init__(self, in_channels, out_channels, ratio):
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(in_channels, out_channels, 2 * ratio, stride=ratio))
        self.ratio = ratio

    def forward(self, x):
        y = self.conv(x)  # (B, C, L) -> (B, C', (L + 1)·r)
        left = self.ratio // 2
        return y[..., left:y.shape[-1] - (self.ratio - left)]  # -> (B, C', L·r)


class ResidualBlock(nn.Module):
    """SEANet residual unit: x + conv1(act(conv_k(act(x)))), with a channel bottleneck of 2."""

    def __init__(self, cfg, dim, kernel_size=3, dilation=1):
        super().__init__()
        self.block = nn.Sequential(activation(cfg), SameConv1d(dim, dim // 2, kernel_size, dilation=dilation),
                                   activation(cfg), SameConv1d(dim // 2, dim, 1))

    def forward(self, x):
        return x + self.block(x)  # (B, C, L) -> (B, C, L); EnCodec's "true skip" (identity shortcut)


class LSTMSkip(nn.Module):
    """LSTM over time with a skip connection: long-range context at the coarsest resolution."""

    def __init__(self, dim, n_layers):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, n_layers, batch_first=True)

    def forward(self, x):
        y, _ = self.lstm(x.transpose(1, 2))  # (B, C, T) -> (B, T, C)
        return x + y.transpose(1, 2)         # -> (B, C, T)


class SEANetEncoder(nn.Module):
    """wav (B, 1, N) -> z (B, D, N / hop). Channels double at each downsampling: n_filters · 2^i."""

    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        layers = [SameConv1d(1, cfg.n_filters, 7)]
        channels = cfg.n_filters
        for ratio in reversed(cfg.ratios):  # encoder: small strides first (4, 4, 5, 8)
            layers += [ResidualBlock(cfg, channels, dilation=2 ** j) for j in range(cfg.n_residual_layers)]
            layers += [activation(cfg), SameConv1d(channels, 2 * channels, 2 * ratio, stride=ratio)]
            channels *= 2
        layers += [LSTMSkip(channels, cfg.lstm_layers), activation(cfg), SameConv1d(channels, cfg.dimension, 7)]
        self.layers = nn.Sequential(*layers)

    def forward(self, wav):
        return self.layers(wav)


class SEANetDecoder(nn.Module):
    """z (B, D, T) -> wav (B, 1, T·hop): the encoder mirrored, transposed convs halve the channels."""

    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        channels = cfg.n_filters * 2 ** len(cfg.ratios)
        layers = [SameConv1d(cfg.dimension, channels, 7), LSTMSkip(channels, cfg.lstm_layers)]
        for ratio in cfg.ratios:  # decoder: large strides first (8, 5, 4, 4)
            layers += [activation(cfg), UpConv1d(channels, channels // 2, ratio)]
            channels //= 2
            layers += [ResidualBlock(cfg, channels, dilation=2 ** j) for j in range(cfg.n_residual_layers)]
        layers += [activation(cfg), SameConv1d(channels, 1, 7)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z):
        return self.layers(z)


# ==== the codec ==========================================================================================
class EncodecModel(nn.Module):
    """Encoder + RVQ + decoder, with the public names of DESIGN.md (sample_rate, frame_rate, n_q,
    codebook_size, encode, decode) and atomic save / weights-only load.

    The encoder and decoder come from `build_encoder` / `build_decoder`: SEANet here, the STFT pair in
    spectral_codec.SpectralEncodec. `spectral_codec.build_codec(cfg)` picks the class from the config."""

    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        assert cfg.n_filters * 2 ** len(cfg.ratios) >= 2, "too few filters"
        if cfg.spectral and type(self).build_encoder is EncodecModel.build_encoder:
            raise ValueError("EncodecConfig(spectral=True) is built by spectral_codec.build_codec(cfg)")
        self.cfg = cfg
        self.encoder = self.build_encoder(cfg)
        self.quantizer = ResidualVectorQuantizer(cfg.dimension, cfg.n_q, cfg.codebook_size,
                                                 cfg.quantizer_dropout, cfg.ema_decay, cfg.dead_threshold)
        self.decoder = self.build_decoder(cfg)
        self.sample_rate, self.n_q, self.codebook_size = cfg.sample_rate, cfg.n_q, cfg.codebook_size
        self.hop_length, self.frame_rate = cfg.hop_length, cfg.frame_rate

    def build_encoder(self, cfg) -> nn.Module:
        return SEANetEncoder(cfg)

    def build_decoder(self, cfg) -> nn.Module:
        return SEANetDecoder(cfg)

    @property
    def bitrate(self) -> float:
        """Bits per second: each frame sends n_q indices of log2(codebook_size) bits (paper: 2.2 kbps)."""
        return self.quantizer.bitrate(self.frame_rate)

    def _pad(self, wav):
        """(B, C, N) -> (B, 1, T·hop), T = ceil(N / hop): zeros at the end, so every conv divides evenly."""
        B, C, N = wav.shape
        if C != 1:
            raise ValueError(f"the codec takes mono audio (B, 1, N), got {C} channels")
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
        time), so frame t also sees a few frames to its right. At the end of a clip those are zero
        padding, i.e. silence: encoding a prompt cut from the middle of a note gives last frames that
        say "the note stops here" (NOTES.md, "Continuation drops look-ahead frames"). Measured, not
        derived, so it holds for both encoders: change only the last frame of a noise signal and count
        the earlier frames whose latent moves.
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
