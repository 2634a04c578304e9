"""Audio helpers shared by every stage: read, write, downmix, resample, filterbanks, pitch.

Nothing here is a model: these are the small signal-processing tools that the codec's losses, the
chroma extractor, the evaluation and the dataset all need, written once. Built by hand where the
idea is worth reading (the windowed-sinc resampler, the mel filterbank); torch/soundfile elsewhere.

Conventions: audio is float32 in [-1, 1]; one file is (C, N) (C channels, N samples), a batch is
(B, C, N). Pitch is in MIDI numbers (A4 = 440 Hz = 69, one unit per semitone).
"""
import math
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F


# ---- pitch: one mapping between hertz and MIDI numbers ------------------------------------------------
def hz_to_midi(freqs):
    """p(f) = 69 + 12·log2(f / 440): the MIDI pitch of a frequency (tensor in, tensor out; f > 0)."""
    return 69 + 12 * torch.log2(freqs / 440.0)


def midi_to_hz(pitch):
    """f(p) = 440 · 2^((p − 69) / 12), the inverse of hz_to_midi (a float or a tensor)."""
    return 440.0 * 2 ** ((pitch - 69) / 12)


# ---- files ------------------------------------------------------------------------------------------
class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file."""


def read_audio(path):
    """Read any file soundfile can read. Returns (wav (C, N) float32 tensor, sample_rate)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        data, sample_rate = sf.read(path, dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: cannot read audio ({error})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file is empty (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), sample_rate  # (N, C) -> (C, N)


def to_mono(wav):
    """Average the channels: (C, N) -> (1, N)."""
    if wav.dim() != 2:
        raise ValueError(f"wav: expected shape (C, N), got {tuple(wav.shape)}")
    return wav.mean(dim=0, keepdim=True)  # (C, N) -> (1, N)


def resample(wav, from_rate, to_rate, zeros=16, rolloff=0.95, beta=8.6):
    """Band-limited resampling with a Kaiser-windowed sinc, written out by hand.

    With g = gcd(from_rate, to_rate), output sample j sits at input time t_j = j * down / up
    (up = to_rate / g, down = from_rate / g), i.e. at integer sample base_j = floor(j down / up)
    plus one of `up` fractional phases p_j / up. Each phase has its own filter row (polyphase):
        y[j] = sum_k x[base_j + k] * h(p_j / up - k),   h(tau) = c * sinc(c * tau) * kaiser(tau)
    where c = rolloff * min(1, up / down) puts the low-pass just below the lower of the two
    Nyquist frequencies (no aliasing when going down, no images when going up).

    Args:
        wav: (..., N) float tensor, any leading dims.
        from_rate, to_rate: positive integer sample rates.
        zeros: sinc zero crossings kept on each side (filter length vs. sharpness).
    Returns:
        (..., M) with M = ceil(N * to_rate / from_rate).
    """
    if int(from_rate) != from_rate or int(to_rate) != to_rate or from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive integers, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return wav.clone()
    *lead, N = wav.shape
    g = math.gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // g, int(from_rate) // g
    cutoff = rolloff * min(1.0, up / down)  # fraction of the input Nyquist frequency
    half = math.ceil(zeros / cutoff)  # taps each side: the sinc widens as the cutoff drops
    taps = torch.arange(-half, half + 1)  # (2 half + 1,) = k
    tau = torch.arange(up, dtype=torch.float64)[:, None] / up - taps[None, :]  # (up, taps)
    window = torch.special.i0(beta * (1 - (tau / (half + 1)) ** 2).clamp(min=0).sqrt())
    kernel = cutoff * torch.sinc(cutoff * tau) * window  # (up, taps), one row per phase
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(wav.dtype)  # unit DC gain per phase
    M = math.ceil(N * up / down)
    j = torch.arange(M)
    base, phase = (j * down) // up, (j * down) % up  # exact integer positions, (M,) each
    x = F.pad(wav.reshape(-1, N), (half, half))  # (..., N) -> (R, N + 2 half), zeros outside
    out = wav.new_empty(x.shape[0], M)
    for start in range(0, M, 16384):  # chunks bound the (R, chunk, taps) gather to a few MB
        sl = slice(start, start + 16384)
        index = base[sl, None] + taps[None, :] + half  # (chunk, taps) into the padded input
        out[:, sl] = (x[:, index] * kernel[phase[sl]]).sum(dim=-1)  # (R, chunk, taps) -> (R, chunk)
    return out.reshape(*lead, M)  # (R, M) -> (..., M)


# The level every wav this project writes from a model is brought to: the toy clips' own peak, so a
# reconstruction or a generated clip plays as loud as the real clip beside it.
PEAK = 0.9


def peak_normalize(wav, peak=PEAK):
    """Scale so that max |wav| = peak (silence is returned unchanged)."""
    largest = wav.abs().max()
    return wav.clone() if largest == 0 else wav * (peak / largest)


def normalize_audio(wav, strategy="peak", peak=PEAK, rms=0.1):
    """Bring float audio (..., N) to a stated level before it becomes 16-bit PCM (whose range is ±1).

    A decoder's output is not bounded: the spectral decoder chooses its own phases, so the same
    spectrum can peak higher than the input did, and a plain clamp turns every overshoot into hard
    clipping. The strategies (after the reference library's `audio_write`):
        "peak"  scale so max |x| = peak: nothing clips, every file has the same peak (the default);
        "rms"   scale so the RMS is `rms` (a loudness target), then down if that would exceed `peak`;
        "clip"  no scaling: samples past ±1 are clipped, with a warning that counts them.
    Silence stays silence. Returns audio of the same shape.
    """
    if strategy == "peak":
        return peak_normalize(wav, peak)
    if strategy == "rms":
        level = wav.pow(2).mean().sqrt()
        gain = 0.0 if level == 0 else min(rms / float(level), peak / float(wav.abs().max()))
        return wav * gain
    if strategy == "clip":
        clipped = int((wav.abs() > 1).sum())
        if clipped:
            warnings.warn(f"{clipped} samples beyond ±1 are clipped (use strategy 'peak' or 'rms' to avoid it)")
        return wav.clamp(-1, 1)
    raise ValueError(f"strategy must be 'peak', 'rms' or 'clip', got {strategy!r}")


def write_audio(path, wav, sample_rate, strategy="peak"):
    """Write (C, N) or (N,) float audio as a 16-bit PCM wav, levelled by `normalize_audio(strategy)`."""
    wav = torch.as_tensor(wav, dtype=torch.float32)
    if wav.dim() == 1:
        wav = wav[None]  # (N,) -> (1, N)
    if wav.dim() != 2:
        raise ValueError(f"wav: expected shape (C, N) or (N,), got {tuple(wav.shape)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    samples = normalize_audio(wav, strategy).T.numpy()  # within ±1 by construction; (C, N) -> (N, C), soundfile's layout
    sf.write(path, samples, int(sample_rate), subtype="PCM_16")


def load_audio(path, sample_rate, channels=1):
    """Read, downmix and resample: any audio file -> (1, N) float32 at `sample_rate`. channels=2 (a
    stereo model): (2, N), a mono file's one channel copied to both, more channels downmixed first."""
    wav, file_rate = read_audio(path)
    if channels == 1 or wav.shape[0] != channels:
        wav = to_mono(wav).expand(channels, -1)  # (C, N) -> (1, N) -> (channels, N)
    return resample(wav, file_rate, sample_rate)  # (channels, N) -> (channels, N')


def stack_wavs(wavs, n=None):
    """List of (C, N_i) -> (B, C, n), cropped or zero-padded at the end to n (default: the longest)."""
    n = max(w.shape[-1] for w in wavs) if n is None else n
    return torch.stack([F.pad(w[..., :n], (0, n - min(n, w.shape[-1]))) for w in wavs])


# ---- filterbanks: FFT bins -> bands ---------------------------------------------------------------------
def mel_filterbank(n_fft, n_mels, sample_rate, f_min=40.0, f_max=None):
    """Triangular filters equally spaced on the mel scale m(f) = 2595 log10(1 + f / 700):
    (n_mels, n_fft // 2 + 1). Each filter rises from the previous band edge to its centre and falls
    to the next edge."""
    f_max = sample_rate / 2 if f_max is None else f_max
    mel = lambda f: 2595 * torch.log10(1 + torch.as_tensor(f, dtype=torch.float64) / 700)
    edges_mel = torch.linspace(float(mel(f_min)), float(mel(f_max)), n_mels + 2, dtype=torch.float64)
    edges = 700 * (10 ** (edges_mel / 2595) - 1)  # (n_mels + 2,) band edges in Hz
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # FFT bin centres
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs - lower) / (centre - lower)
    fall = (upper - freqs) / (upper - centre)
    return rise.minimum(fall).clamp(min=0).float()  # (n_mels, n_freqs)


def semitone_filterbank(n_fft, sample_rate, lowest=40, highest=100):
    """(highest - lowest + 1, n_fft // 2 + 1): one Gaussian band per MIDI note m (σ = ½ semitone) over
    the FFT bins' pitch. Defaults: E2 (82 Hz) .. E7 (2637 Hz)."""
    freqs = torch.arange(n_fft // 2 + 1) * sample_rate / n_fft
    pitch = hz_to_midi(freqs.clamp(min=1e-3))                                  # (n_freqs,)
    notes = torch.arange(lowest, highest + 1, dtype=torch.float32)             # (n_notes,)
    return torch.exp(-0.5 * ((pitch[None, :] - notes[:, None]) / 0.5) ** 2)   # (n_notes, n_freqs)
