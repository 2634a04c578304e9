"""The tiny recipe's codec ends: an STFT encoder and an inverse-STFT decoder around EnCodec's RVQ.

Deviation (ours, `EncodecConfig.spectral`, on in the tiny recipe; the paper's codec is SEANet,
encodec.py). A SEANet encoder must learn its own filterbank with strided convs, and a SEANet decoder
must learn to make a waveform with transposed convs; in a few CPU minutes ours rendered every note on
a multiple of the 50 Hz frame rate, so melodies were lost (NOTES.md, "Spectral codec"). Here

    wav (B, 1, N) ──|STFT| (2 frames per latent frame)──▶ convs + LSTM ──▶ z (B, D, T)
    z ──RVQ──▶ ẑ ──convs + LSTM──▶ per STFT frame and bin: log magnitude, frequency offset δ
      ──phase = running sum of the frequency──▶ inverse STFT ──▶ ŵav (B, 1, T·hop)

The RVQ, the 50 Hz frame rate, the codes and everything downstream are EnCodec's. The decoder
invents its own phase, so this codec trains without a waveform L1 and scores nothing in SI-SNR.

Shape letters: B batch, N samples, D latent dimension, T latent frames, S = 2T STFT frames.
`build_codec(cfg)` and `load_codec(path)` pick this class or encodec.EncodecModel from the config.
"""
import math

import torch
import torch.nn as nn

from encodec import (EncodecConfig, EncodecModel, LSTMSkip, ResidualBlock, SameConv1d, activation,
                     read_checkpoint)


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


class SpectralEncodec(EncodecModel):
    """EncodecModel with the STFT encoder and inverse-STFT decoder (cfg.spectral must be True)."""

    def build_encoder(self, cfg) -> nn.Module:
        return STFTEncoder(cfg)

    def build_decoder(self, cfg) -> nn.Module:
        return ISTFTDecoder(cfg)


def build_codec(cfg: EncodecConfig) -> EncodecModel:
    """The switch between the paper's codec and ours: SEANet unless cfg.spectral."""
    return SpectralEncodec(cfg) if cfg.spectral else EncodecModel(cfg)


def load_codec(path, device="cpu"):
    """-> (codec in eval mode, checkpoint dict), either kind, from a file written by EncodecModel.save."""
    ckpt = read_checkpoint(path, "codec")
    cls = SpectralEncodec if ckpt["config"].get("spectral") else EncodecModel
    return cls.from_checkpoint(ckpt, where=str(path)).to(device), ckpt
