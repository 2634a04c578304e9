"""EnCodec's multi-scale STFT (MS-STFT) discriminator and its adversarial losses (EnCodec §3.3-3.4).

Part of the paper's codec training (MusicGen §2.1 uses EnCodec as trained there): the decoder is also
trained to fool a discriminator that looks at complex STFTs at several resolutions, and to match the
discriminator's internal features on real audio. Off in the tiny recipe (`EncodecConfig.adversarial`;
NOTES.md, "Adversarial training off"): on a CPU budget the discriminator costs more steps than it gives.

Shape letters: B batch, N samples, F' frequency bins after the strided convs.
Data flow: train.py stage 1: real wav and reconstruction (B, 1, N) ─MSSTFTDiscriminator─▶ per scale
(logits, features) ─▶ hinge / adversarial / feature-matching losses.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


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
