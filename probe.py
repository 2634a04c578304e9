"""The attribute probe: our stand-in for the pretrained classifiers the paper evaluates with (§4.2).

MusicGen is scored with PaSST (a pretrained audio classifier, for KL), VGGish (an audio embedding, for
FAD) and CLAP (text-audio agreement). None exists for our toy music, so one small *attribute probe*
plays all three roles: hand-made features of a clip → a shared hidden layer (the embedding, for the
Fréchet distance) → one classifier per attribute the toy data labels (instrument, tempo, mode,
register, drums; their distributions for KL, their accuracy on stated attributes for adherence).
It is trained on REAL clips only and never sees the generator, so it can judge it.

Shape letters: B batch, N samples, E features, H embedding width, T50 frames at 50 per second.
Data flow: data.py clips ─probe_features─▶ (B, E) ─AttributeProbe─▶ embedding (B, H), logits per
attribute ─▶ evaluate.py (Tables 1-3).
"""
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import toy
from audio import hz_to_midi, mel_filterbank, resample, stack_wavs

PROBE_RATE = 16000  # the probe works at the toy sample rate; other audio is resampled first
PROBE_VERSION = 1  # bump when the features change: a saved probe.pt of another version is retrained


# ==== the probe's features (hand-made, one idea per line) =============================================
def probe_features(wav, sample_rate=PROBE_RATE):
    """Hand-made descriptors of a clip, one group per attribute the probe must hear.

    Args:
        wav: (B, 1, N) float audio.
    Returns:
        (B, E) features, E = 40 + 40 + 12 + 25 + 5 = 122.
    """
    B, C, N = wav.shape
    if C != 1:
        raise ValueError(f"wav: expected (B, 1, N) mono audio, got {tuple(wav.shape)}")
    # Timbre and register: log-mel statistics over time (mean = spectral envelope, std = its movement).
    x, power, log_mel = normalised_log_mel(wav, sample_rate)  # (B, N'), (B, 513, T50), (B, 40, T50)
    # Mode: soft pitch-class profile (energy per pitch class, 60 Hz-2.1 kHz). We keep the *soft*
    # profile rather than ChromaExtractor's argmax one-hot: under drums the argmax of some frames
    # flips to a drum bin, while the summed energy still holds the E/Eb, A/Ab, B/Bb balance.
    fine = torch.stft(x, 4096, 1024, window=torch.hann_window(4096), return_complex=True).abs() ** 2  # (B, 2049, T')
    freqs = torch.linspace(0, PROBE_RATE / 2, 2049)
    band = (freqs > 60) & (freqs < 2100)
    pitch_class = hz_to_midi(freqs[band]).round().long() % 12  # MIDI note mod 12
    profile = torch.zeros(B, 12).index_add_(1, pitch_class, fine[:, band].sum(-1))  # (B, 12)
    profile = profile / profile.sum(-1, keepdim=True).clamp(min=1e-8)
    # Tempo: autocorrelation of the onset strength (positive spectral flux) over lags 20 ms-2 s.
    autocorr = onset_autocorrelation(log_mel)  # (B, 40, T50) -> (B, 100)
    # Pooled to 80 ms lag bins: enough to tell the beat periods apart (857, 545, 375 ms) and few
    # enough dimensions not to drown the other features when the probe has few clips to learn from.
    autocorr = autocorr.view(B, 25, 4).mean(-1)  # (B, 100) -> (B, 25)
    # Drums: noisy frames are spectrally flat (geometric / arithmetic mean of the power ≈ 1) and the
    # hi-hat and snare put energy above 4 kHz, where the band-limited instruments have little.
    log_power = torch.log(power[:, 6:448] + 1e-8)  # 100 Hz - 7 kHz
    flatness = (log_power.mean(1).exp() / (power[:, 6:448].mean(1) + 1e-8))  # (B, T50)
    high = power[:, 256:].sum(1) / (power.sum(1) + 1e-8)  # (B, T50) share of energy above 4 kHz
    drums = torch.stack([flatness.mean(-1), flatness.std(-1), high.mean(-1).sqrt(), high.std(-1).sqrt(),
                         high.quantile(0.9, dim=-1).sqrt()], dim=-1)  # (B, 5)
    return torch.cat([log_mel.mean(-1), log_mel.std(-1), 10 * profile, autocorr, drums], dim=-1)  # (B, E)


def normalised_log_mel(wav, sample_rate=PROBE_RATE):
    """wav (B, 1, N) -> (x (B, N') at PROBE_RATE with unit RMS, power (B, 513, T50), log-mel (B, 40, T50)):
    1024-point STFT, hop 320 = 50 frames/s. Unit RMS makes every feature loudness-invariant: generated
    audio need not be as loud as the data."""
    if sample_rate != PROBE_RATE:
        wav = resample(wav, sample_rate, PROBE_RATE)  # (B, 1, N) -> (B, 1, N')
    x = wav[:, 0].float()  # (B, N')
    x = x / x.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp(min=1e-4)
    power = torch.stft(x, 1024, 320, window=torch.hann_window(1024), return_complex=True).abs() ** 2  # (B, 513, T50)
    log_mel = torch.log(mel_filterbank(1024, 40, PROBE_RATE) @ power + 1e-4)  # (B, 40, T50)
    return x, power, log_mel


def onset_autocorrelation(log_mel, max_lag=100):
    """log_mel (B, M, T) at 50 frames/s -> (B, max_lag): r[l] / r[0] for lags l = 1..max_lag frames of the
    onset strength (positive spectral flux, mean removed). A steady beat of period P frames peaks at l = P."""
    flux = (log_mel[:, :, 1:] - log_mel[:, :, :-1]).clamp(min=0).sum(1)  # (B, T - 1)
    flux = flux - flux.mean(-1, keepdim=True)
    spectrum = torch.fft.rfft(flux, n=2 * flux.shape[-1])  # zero-padded: linear, not circular
    autocorr = torch.fft.irfft(spectrum.abs() ** 2)[:, :max_lag + 1]  # (B, max_lag + 1), lag 0..max_lag
    return autocorr[:, 1:] / autocorr[:, :1].clamp(min=1e-8)  # (B, max_lag)


def beat_strength(wav, sample_rate=PROBE_RATE):
    """How periodic a clip's onsets are: the highest onset autocorrelation at lags 0.3-1.0 s (beats of
    200-60 BPM; the toy tempi are 0.86, 0.55 and 0.38 s). Steady onsets score high, onsets at random
    times low (a test pins both). Not in the paper: it tracks keeping a beat, the tiny LM's weakest
    skill (NOTES.md, "LM reads codebook 1 only"). wav (B, 1, N) -> (B,)."""
    _, _, log_mel = normalised_log_mel(wav, sample_rate)  # (B, 1, N) -> (B, 40, T50)
    return onset_autocorrelation(log_mel)[:, 14:50].amax(-1)  # lags 15..50 frames: (B, 100) -> (B,)


def degrade(wav, generator):
    """Mild codec-like damage for training-time augmentation, drawn per clip: a gain change, a
    low-pass (cut-off 2.5-7 kHz, a small codec's lost top octave) and white noise (15-40 dB SNR).
    wav (B, 1, N) -> (B, 1, N)."""
    B, _, N = wav.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator)
    spectrum = torch.fft.rfft(wav, dim=-1)  # (B, 1, N//2 + 1)
    freqs = torch.linspace(0, PROBE_RATE / 2, spectrum.shape[-1])
    cutoff = 2500 + 4500 * rand(B, 1, 1)
    wav = torch.fft.irfft(spectrum * torch.sigmoid((cutoff - freqs) / 300), n=N, dim=-1)  # soft roll-off
    rms = wav.pow(2).mean(-1, keepdim=True).sqrt()
    snr_db = 15 + 25 * rand(B, 1, 1)
    noise = torch.randn(wav.shape, generator=generator) * rms * 10 ** (-snr_db / 20)
    return (wav + noise) * (0.3 + 0.7 * rand(B, 1, 1))


# ==== the probe: shared hidden layer (the embedding) + one head per attribute ==========================
class AttributeProbe(nn.Module):
    """Standardised features (B, E) -> embedding (B, H) -> one logit vector per attribute.

    The paper's analogue is PaSST (for KL) and VGGish (for FAD); one small network plays both roles.
    """

    def __init__(self, n_features, hidden=64, attributes=None):
        super().__init__()
        self.attributes = dict(attributes or toy.ATTRIBUTES)  # name -> label values
        self.register_buffer("mean", torch.zeros(n_features))  # train statistics of the features
        self.register_buffer("std", torch.ones(n_features))
        self.body = nn.Sequential(nn.Dropout(0.1), nn.Linear(n_features, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, len(values)) for name, values in self.attributes.items()})

    def embed(self, features):
        # Clamped z-scores: one feature far outside the training range (say, energy in a pitch class
        # no training clip had) must not drown all the others on generated audio.
        return self.body(((features - self.mean) / self.std).clamp(-6, 6))  # (B, E) -> (B, H)

    def forward(self, features):
        h = self.embed(features)
        return {name: head(h) for name, head in self.heads.items()}  # name -> (B, n_values)


def attribute_labels(clips, attributes=toy.ATTRIBUTES):
    """name -> (B,) int64 label index (-1 where a clip lacks the attribute)."""
    return {name: torch.tensor([values.index(c.attributes[name]) if c.attributes.get(name) in values else -1
                                for c in clips]) for name, values in attributes.items()}


def batched(fn, wav, size=64):
    """Apply fn to (B, ...) in chunks of `size` and concatenate (bounds the STFT memory)."""
    return torch.cat([fn(wav[i:i + size]) for i in range(0, len(wav), size)])


def train_probe(train_clips, heldout_clips, seed=0, steps=400, n_augment=2, hidden=64, attributes=None):
    """Fit the probe on real training clips (plus degraded copies); report held-out accuracy.
    `attributes` (name -> label values) defaults to toy.ATTRIBUTES.

    Returns (probe, report) with report = {"accuracy": mean held-out accuracy, "per_attribute": {...},
    "accuracy_degraded": the same on degraded held-out clips}.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    wav = stack_wavs([c.wav for c in train_clips])  # (B, 1, N)
    views = [batched(probe_features, wav)] + [batched(probe_features, degrade(wav, generator))
                                              for _ in range(n_augment)]
    features = torch.cat(views)  # ((1 + n_augment) B, E)
    probe = AttributeProbe(features.shape[1], hidden, attributes)
    labels = {k: v.repeat(1 + n_augment) for k, v in attribute_labels(train_clips, probe.attributes).items()}
    probe.mean.copy_(features.mean(0))
    # A floor on the scale: a feature that barely varies in training is not a reason to trust it.
    std = features.std(0)
    probe.std.copy_(std.clamp(min=0.1 * float(std.median()) + 1e-8))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    probe.train()
    for _ in range(steps):  # full batch: a few thousand rows of 197 features, a few seconds
        logits = probe(features)
        loss = sum(F.cross_entropy(logits[k], labels[k], ignore_index=-1) for k in logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe.eval()
    held_wav = stack_wavs([c.wav for c in heldout_clips])
    per_attribute = probe_accuracy(probe, batched(probe_features, held_wav), heldout_clips)
    degraded = probe_accuracy(probe, batched(probe_features, degrade(held_wav, generator)), heldout_clips)
    report = dict(accuracy=mean(per_attribute.values()), per_attribute=per_attribute,
                  accuracy_degraded=mean(degraded.values()))
    return probe, report


def mean(values):
    values = list(values)
    return sum(values) / max(1, len(values))


@torch.no_grad()
def probe_accuracy(probe, features, clips, stated_only=False):
    """Per-attribute accuracy of the probe's argmax against the clips' labels: name -> float.
    With stated_only, only attributes the clip's description states count (text adherence)."""
    logits = probe(features)
    result = {}
    for name, values in probe.attributes.items():
        hits = []
        for i, clip in enumerate(clips):
            truth = clip.attributes.get(name)
            if truth not in values or (stated_only and name not in clip.attributes.get("stated", values)):
                continue
            hits.append(float(values[int(logits[name][i].argmax())] == truth))
        if hits:
            result[name] = mean(hits)
    return result


def save_probe(path, probe, report):
    """A weights_only-safe dict: tensors, numbers, strings."""
    torch.save(dict(version=PROBE_VERSION, model=probe.state_dict(), n_features=probe.mean.numel(),
                    hidden=probe.heads[next(iter(probe.heads))].in_features, report=report), path)


def load_or_train_probe(run_dir, data_dir, seed=0):
    """probe.pt from the run dir if it was trained on this data (same manifest) with these features,
    else load the real clips, train one (~20 s) and save it. Returns (probe, report)."""
    path, manifest = Path(run_dir) / "probe.pt", Path(data_dir).resolve() / "manifest.jsonl"
    key = f"{manifest}:{manifest.stat().st_size}:{manifest.stat().st_mtime_ns}:{seed}"
    if path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("version") == PROBE_VERSION and ckpt["report"].get("data") == key:
            probe = AttributeProbe(ckpt["n_features"], ckpt["hidden"])
            probe.load_state_dict(ckpt["model"])
            return probe.eval(), ckpt["report"]
    clips = data.load_clips(data_dir, PROBE_RATE)
    if not any(c.attributes.get("instrument") for c in clips):
        raise SystemExit(f"error: {manifest} has no attribute labels; the probe needs the toy dataset's")
    started = time.perf_counter()
    train_clips, heldout_clips = [c for c in clips if c.split == "train"], [c for c in clips if c.split != "train"]
    if not heldout_clips:  # a handful of clips (tests): score on the training clips, and say so
        print("note: no held-out clips; the probe's accuracy is measured on its training clips")
        heldout_clips = train_clips
    probe, report = train_probe(train_clips, heldout_clips, seed=seed)
    report.update(data=key, seconds=time.perf_counter() - started)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    save_probe(path, probe, report)
    return probe, report


def check_probe(report):
    """The metrics below are only as good as the probe: shout if it is not trustworthy."""
    if report["accuracy"] < 0.95:
        print("!" * 78 + f"\nWARNING: the attribute probe reaches only {report['accuracy']:.3f} held-out accuracy "
              "(< 0.95):\nadherence, KL and Fréchet below are NOT trustworthy.\n" + "!" * 78, file=sys.stderr)


@torch.no_grad()
def probe_outputs(probe, audio, sample_rate):
    """audio (B, 1, N) -> (features (B, E), probabilities name -> (B, n_values), embedding (B, H))."""
    features = batched(lambda wav: probe_features(wav, sample_rate), audio)
    return features, {k: v.softmax(-1) for k, v in probe(features).items()}, probe.embed(features)
