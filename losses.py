"""The codec's training objective (EnCodec §3.3-3.4, MusicGen §2.1): reconstruction losses, two of our
own, and the multi-scale STFT discriminator.

EnCodec trains its autoencoder to reproduce the input under a time-domain L1 loss and a multi-scale
mel-spectrogram loss, plus the RVQ's commitment loss and an adversarial loss (part 2, below):

    L = λ_l1·|x − x̂|₁ + λ_mel·L_mel + λ_c·L_commit [+ λ_adv·L_g + λ_feat·L_feat]

The tiny recipe adds a semitone-spectrogram loss and an instantaneous-frequency loss, which make the
few-minute codec keep the pitch of each note (weights 0 in the paper's `EncodecConfig()`).

Part 2, the adversary: the decoder is also trained to fool a discriminator that looks at complex
STFTs at several resolutions, and to match the discriminator's internal features on real audio. Off
in the tiny recipe (`EncodecConfig.adversarial`; NOTES.md, "Adversarial training off"): on a CPU
budget the discriminator costs more steps than it gives.

Shape letters: B batch, N samples, M mel bands, S STFT frames, F' frequency bins after strided convs.
Data flow: stage 1 (stages.py): wav and the codec's reconstruction (B, 1, N) ─ReconstructionLoss─▶
scalar; ─MSSTFTDiscriminator─▶ per scale (logits, features) ─▶ hinge / adversarial / feature losses.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from audio import mel_filterbank, semitone_filterbank
from encodec import EncodecConfig


def spectral_distance(s, s_hat):
    """mean|s − ŝ| + mean|log s − log ŝ| over two non-negative spectrograms: the linear term weights loud
    partials, the log term hears quiet detail (EnCodec's per-scale frequency loss)."""
    return (s - s_hat).abs().mean() + (torch.log(s + 1e-5) - torch.log(s_hat + 1e-5)).abs().mean()


class MultiScaleMelLoss(nn.Module):
    """EnCodec's frequency loss: over FFT sizes s (window s, hop s/4), with mel spectrogram M_s,

        L_f = 1/|S| Σ_s ( mean|M_s(x) − M_s(x̂)| + mean|log M_s(x) − log M_s(x̂)| )

    The linear term weights loud partials; the log term hears quiet detail. Small FFTs resolve time
    (drum onsets), large ones frequency (pitch). n_mels = min(64, s/4) so no band is empty at s = 64.
    """

    def __init__(self, sample_rate, scales):
        super().__init__()
        self.scales = tuple(scales)
        for s in self.scales:
            self.register_buffer(f"bank_{s}", mel_filterbank(s, min(64, s // 4), sample_rate), persistent=False)
            self.register_buffer(f"window_{s}", torch.hann_window(s), persistent=False)

    def mel(self, wav, s):
        window = getattr(self, f"window_{s}")
        # Divided by the window's sum, a full-scale sine peaks at 0.5 at every FFT size, so the linear
        # term weighs all scales alike instead of being dominated by the largest FFT.
        spec = torch.stft(wav[:, 0], s, s // 4, window=window, return_complex=True).abs() / window.sum()
        return getattr(self, f"bank_{s}") @ spec  # (B, 1, N) -> (B, n_freqs, frames) -> (B, n_mels, frames)

    def forward(self, x, x_hat):
        loss = 0.0
        for s in self.scales:
            loss = loss + spectral_distance(self.mel(x, s), self.mel(x_hat, s))
        return loss / len(self.scales)


class SemitoneLoss(nn.Module):
    """Our addition: the linear + log L1 distance of MultiScaleMelLoss (spectral_distance) on a
    semitone-spaced spectrogram (2048-point STFT, 7.8 Hz bins at 16 kHz). At C3 (131 Hz) the mel bands
    are ~4 semitones apart, so a wrong note mostly moves energy inside one band; here every note has
    its own band (NOTES.md, "Semitone loss")."""

    def __init__(self, sample_rate, n_fft=2048):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("bank", semitone_filterbank(n_fft, sample_rate), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def semitones(self, wav):
        spec = torch.stft(wav[:, 0], self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        return self.bank @ (spec.abs() / self.window.sum())  # (B, 1, N) -> (B, n_notes, frames)

    def forward(self, x, x_hat):
        return spectral_distance(self.semitones(x), self.semitones(x_hat))


class InstantaneousFrequencyLoss(nn.Module):
    """Our addition: does each partial ring at the input's frequency? Between two STFT frames (hop h)
    a sinusoid of frequency f advances the phase of every bin near f by 2π·f·h / sr, whatever its
    starting phase. With X_k(s) the STFT of the input, X̂_k(s) of the reconstruction, and
    Δφ_k(s) = arg X_k(s) − arg X_k(s−1) the phase advance of bin k,

        L_if = Σ w · (1 − cos(Δφ̂_k(s) − Δφ_k(s))) / Σ w,    w = sqrt(|X_k(s)| · |X_k(s−1)|),

    weighted by the input's magnitude, since only bins with energy have a frequency, per clip, then
    averaged over the batch (so a batch's loss is the mean of its slices': data parallelism, ddp.py). It is blind to
    a constant phase offset and to gain (the spectral decoder invents its own phase; the mel loss
    handles loudness) and is near 0 only if every loud partial has the input's pitch. The cosine comes
    from the products P = X(s)·conj(X(s−1)), whose angle is Δφ: no angle wrapping, no atan2.
    Why: with the magnitude losses alone the notes of the tiny codec wandered by tens of cents and many
    chroma frames came back a semitone off (NOTES.md, "Instantaneous-frequency loss")."""

    def __init__(self, n_fft, hop_length):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def advances(self, wav):
        """wav (B, 1, N) -> P (B, n_freqs, S − 1): X(s)·conj(X(s−1)), angle Δφ, modulus |X(s)||X(s−1)|."""
        spec = torch.stft(wav[:, 0], self.n_fft, self.hop_length, window=self.window, pad_mode="constant",
                          return_complex=True)  # (B, 1, N) -> (B, n_freqs, S)
        return spec[..., 1:] * spec[..., :-1].conj()

    def forward(self, x, x_hat):
        p, p_hat = self.advances(x), self.advances(x_hat)
        weight = p.abs().sqrt()
        cos = (p_hat * p.conj()).real / (p_hat.abs() * p.abs() + 1e-7)  # cos(Δφ̂ − Δφ)
        per_clip = (weight * (1 - cos)).sum((1, 2)) / (weight.sum((1, 2)) + 1e-7)  # (B, n_freqs, S - 1) -> (B,)
        return per_clip.mean()


class ReconstructionLoss(nn.Module):
    """The codec's training objective without the adversary (EnCodec §3.4, with our two additions):

        L = λ_l1·L_l1 + λ_mel·L_mel + λ_pitch·L_semitone + λ_if·L_if + λ_c·L_commit

    with the config's fixed weights. EnCodec rescales each term's gradient with a balancer instead;
    at our scale fixed weights trained as well and are one line to read. Terms of weight 0 are skipped.
    """

    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        self.cfg = cfg
        self.mel = MultiScaleMelLoss(cfg.sample_rate, cfg.mel_scales)
        self.pitch = SemitoneLoss(cfg.sample_rate)
        # On the spectral decoder's own STFT grid (4 hops per window, 2 hops per latent frame).
        self.frequency = InstantaneousFrequencyLoss(cfg.stft_n_fft, cfg.stft_hop)

    def forward(self, wav, recon, commitment):
        """wav, recon (B, 1, N); commitment scalar. Returns (loss, mel term) as scalars."""
        cfg = self.cfg
        l1 = (recon - wav).abs().mean() if cfg.l1_weight else 0.0
        mel = self.mel(wav, recon)
        pitch = self.pitch(wav, recon) if cfg.pitch_weight else 0.0
        frequency = self.frequency(wav, recon) if cfg.frequency_weight else 0.0
        loss = (cfg.l1_weight * l1 + cfg.mel_weight * mel + cfg.pitch_weight * pitch
                + cfg.frequency_weight * frequency + cfg.commitment_weight * commitment)
        return loss, mel


# ==== 2. The adversary: EnCodec's multi-scale STFT (MS-STFT) discriminator ==================================
class STFTDiscriminator(nn.Module):
    """One scale: complex STFT (real and imaginary parts as 2 channels) → 2-D convs over (time, frequency).

    Strides of 2 along frequency and growing dilation along time (1, 2, 4), LeakyReLU(0.2), weight norm.
    Returns the logits (B, 1, frames, F') and every intermediate feature map (for feature matching).
    """

    def __init__(self, n_fft, filters):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        conv = lambda *a, **k: weight_norm(nn.Conv2d(*a, **k))
        self.convs = nn.ModuleList([conv(2, filters, (3, 9), padding=(1, 4))] + [
            conv(filters, filters, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4)) for d in (1, 2, 4)
        ] + [conv(filters, filters, (3, 3), padding=(1, 1))])
        self.out = conv(filters, 1, (3, 3), padding=(1, 1))

    def forward(self, wav):
        spec = torch.stft(wav[:, 0], self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, F, frames) -> (B, 2, frames, F)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)  # frequency axis halves at each strided conv
            features.append(x)
        return self.out(x), features


class MSSTFTDiscriminator(nn.Module):
    """Several STFTDiscriminators at different FFT sizes, so artefacts at every time-frequency
    trade-off are penalised (EnCodec: 5 scales). forward(wav) -> list of (logits, features)."""

    def __init__(self, scales, filters):
        super().__init__()
        self.discriminators = nn.ModuleList(STFTDiscriminator(s, filters) for s in scales)

    def forward(self, wav):
        return [d(wav) for d in self.discriminators]


def discriminator_hinge_loss(real_outputs, fake_outputs):
    """L_d = mean_s [ relu(1 − D_s(x)) + relu(1 + D_s(x̂)) ] (EnCodec eq. 3)."""
    losses = [F.relu(1 - real).mean() + F.relu(1 + fake).mean()
              for (real, _), (fake, _) in zip(real_outputs, fake_outputs)]
    return sum(losses) / len(losses)


def generator_adversarial_loss(fake_outputs):
    """L_g = mean_s relu(1 − D_s(x̂)) (EnCodec eq. 1): the decoder tries to look real."""
    return sum(F.relu(1 - fake).mean() for fake, _ in fake_outputs) / len(fake_outputs)


def feature_matching_loss(real_outputs, fake_outputs):
    """L_feat = mean over scales and layers of |D^l(x) − D^l(x̂)|₁ / mean|D^l(x)| (EnCodec eq. 2)."""
    losses = [(f_real.detach() - f_fake).abs().mean() / (f_real.detach().abs().mean() + 1e-8)
              for (_, real_features), (_, fake_features) in zip(real_outputs, fake_outputs)
              for f_real, f_fake in zip(real_features, fake_features)]
    return sum(losses) / len(losses)
