"""Exercise 18 (§2.1, EnCodec §3.4): the multi-scale mel loss the codec is trained with.

EnCodec's frequency-domain loss compares mel spectrograms M_s of the input x and the reconstruction x̂
at several FFT sizes s (window s, hop s/4), with a linear and a logarithmic term:

    d(S, Ŝ) = mean|S − Ŝ| + mean|log(S + ε) − log(Ŝ + ε)|          ε = 1e-5
    L_mel(x, x̂) = 1/|scales| · Σ_s d(M_s(x), M_s(x̂))

The linear term weighs the loud partials, the log term hears quiet detail; small FFTs resolve time
(drum onsets), large ones frequency (pitch). Write `spectral_distance` and `MultiScaleMelLoss.forward`
in losses.py. `self.mel(wav, s)` (given) is M_s: wav (B, 1, N) → (B, n_mels, frames).
"""
import math

import torch

import losses
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=18, title="The multi-scale mel loss", section="§2.1 (EnCodec §3.4)",
    blanks=[("losses.py", "spectral_distance"), ("losses.py", "MultiScaleMelLoss.forward")],
    hints=["spectral_distance is one line: the mean absolute difference plus the mean absolute difference "
           "of the logs, each log taken of the spectrogram + 1e-5 (a silent band is 0, and log 0 = −inf).",
           "forward: for s in self.scales, add spectral_distance(self.mel(x, s), self.mel(x_hat, s)); "
           "divide by the number of scales, so adding a scale does not change the loss's size."],
)
EPS = 1e-5


def distance(s, s_hat):  # the check's own d(S, Ŝ), written from the formula above
    return (s - s_hat).abs().mean() + (torch.log(s + EPS) - torch.log(s_hat + EPS)).abs().mean()


def signals():
    t = torch.arange(8000) / 16000
    x = (0.5 * torch.sin(2 * math.pi * 440 * t))[None, None]
    generator = torch.Generator().manual_seed(0)
    x_hat = x + 0.05 * torch.randn(x.shape, generator=generator)
    return x, x_hat


def check_a_hand_computed_distance():
    """d([[1, 2], [3, 4]], ones) = 1.5 + (ln 2 + ln 3 + ln 4) / 4, by hand."""
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    got = losses.spectral_distance(s, torch.ones(2, 2))
    linear = (0 + 1 + 2 + 3) / 4
    log = sum(math.log((v + EPS) / (1 + EPS)) for v in (1.0, 2.0, 3.0, 4.0)) / 4
    if not isinstance(got, torch.Tensor) or got.dim() != 0:
        raise Wrong(f"spectral_distance must return a scalar tensor (it is a loss), got {got!r}")
    if abs(float(got) - linear) < 1e-4:
        raise Wrong(f"got {float(got):.4f} = the linear term alone: the log term mean|log S − log Ŝ| is missing")
    if abs(float(got) - (linear + log)) > 1e-4:
        raise Wrong(f"got {float(got):.4f}, expected {linear + log:.4f} = mean|S − Ŝ| {linear} + "
                    f"mean|log(S + ε) − log(Ŝ + ε)| {log:.4f}")


def check_silent_bands_stay_finite():
    """A silent band (all zeros) against a loud one gives a finite distance: log(0 + ε), not log 0."""
    got = losses.spectral_distance(torch.zeros(3, 4), torch.full((3, 4), 0.5))
    if not torch.isfinite(got):
        raise Wrong(f"a silent band gives {float(got)}: take the log of S + 1e-5, not of S (log 0 = −inf)")
    if abs(float(got) - float(distance(torch.zeros(3, 4), torch.full((3, 4), 0.5)))) > 1e-4:
        raise Wrong(f"a silent band against 0.5 should give 0.5 + |log(1e-5) − log(0.5 + 1e-5)|, got {float(got):.4f}")


def check_the_loss_averages_the_scales():
    """MultiScaleMelLoss: the mean over the FFT sizes of d(M_s(x), M_s(x̂)) (with d as written above)."""
    x, x_hat = signals()
    loss = losses.MultiScaleMelLoss(16000, scales=(64, 256, 1024))
    got = loss(x, x_hat)
    terms = [float(distance(loss.mel(x, s), loss.mel(x_hat, s))) for s in loss.scales]
    expected = sum(terms) / len(terms)
    if abs(float(got) - sum(terms)) < 1e-5:
        raise Wrong(f"got {float(got):.4f} = the sum over the 3 scales: average over the scales instead "
                    "(divide by len(self.scales))")
    if abs(float(got) - expected) > 1e-5:
        raise Wrong(f"got {float(got):.4f}, expected {expected:.4f} (per scale {[round(t, 4) for t in terms]}): "
                    "each scale compares self.mel(x, s) with self.mel(x_hat, s)")


def check_zero_for_a_perfect_copy_and_a_gradient_for_the_decoder():
    """L(x, x) = 0, L grows with the error, and its gradient reaches the reconstruction."""
    x, x_hat = signals()
    loss = losses.MultiScaleMelLoss(16000, scales=(64, 256))
    if abs(float(loss(x, x.clone()))) > 1e-6:
        raise Wrong(f"a perfect reconstruction must cost 0, got {float(loss(x, x.clone())):.6f}")
    worse = x + 4 * (x_hat - x)
    if not float(loss(x, worse)) > float(loss(x, x_hat)):
        raise Wrong("a reconstruction with 4 times the error must cost more")
    x_hat = x_hat.clone().requires_grad_(True)
    loss(x, x_hat).backward()
    if x_hat.grad is None or not x_hat.grad.abs().sum() > 0:
        raise Wrong("no gradient reaches x̂: the loss must be computed with torch operations on the "
                    "spectrograms (no .item(), .detach() or float() inside)")
