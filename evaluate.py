"""The paper's evaluation in miniature (§4.2, Tables 1-3), including the pattern ablation.

MusicGen is scored with a pretrained audio classifier (PaSST), a pretrained audio embedding (VGGish
for FAD), a text-audio model (CLAP) and human listeners. None of these exists for our toy music, so
each objective metric gets a toy analogue built on one small *attribute probe*: a classifier trained
on REAL toy clips to recognise instrument, tempo, mode, register and drums. The probe never sees the
generator, so it can judge it, as PaSST judges MusicGen.

    metric (paper)                          here
    KL on PaSST label distributions         KL on the probe's label distributions, per attribute
    FAD on VGGish embeddings                Fréchet distance on the probe's hidden layer
    CLAP text/audio score                   text adherence: probe accuracy on the attributes a
                                            description states (our labels are exact, CLAP's are not)
    chroma cosine similarity (melody)       the same, with conditioners.ChromaExtractor
    (EnCodec paper) mel distance, SI-SNR,   the same, on held-out clips through the trained codec
    bitrate, codebook usage

Shape letters: B batch, N samples, E probe features, H probe embedding width, F chroma frames,
K codebooks, T frames. Data flow: runs/tiny/{codec,lm}.pt + data/toy held-out clips → generation →
probe / chroma → results.json, results.md (Tables 1-3) and eval/index.html (listen in a browser).

    python evaluate.py --run runs/tiny                    # Tables 1 and 2, codec metrics (~2 min)
    python evaluate.py --run runs/tiny --ablate-patterns  # Table 3: one LM per pattern, same budget
"""
import argparse
import html
import json
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from encodec import mel_filterbank
from musicgen import DEFAULT_CFG_COEF, MusicGen
from rvq import perplexity

PROBE_RATE = 16000  # the probe works at the toy sample rate; other audio is resampled first
PROBE_VERSION = 1  # bump when the features change: a saved probe.pt of another version is retrained
TEXT, MELODY = f"text, cfg_coef {DEFAULT_CFG_COEF:g}", f"text + melody, cfg_coef {DEFAULT_CFG_COEF:g}"  # headline rows


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
    pitch_class = (torch.round(12 * torch.log2(freqs[band] / 440) + 69).long() % 12)  # MIDI note mod 12
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
        wav = data.resample(wav, sample_rate, PROBE_RATE)  # (B, 1, N) -> (B, 1, N')
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
    200-60 BPM; the toy tempi are 0.86, 0.55 and 0.38 s). Real toy clips score ~0.6, a clip whose notes
    start at random times ~0.2. Not in the paper; it tracks our LM's weakest skill (README, "Keeping
    a beat"). wav (B, 1, N) -> (B,)."""
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
        self.attributes = dict(attributes or data.ATTRIBUTES)  # name -> label values
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


def attribute_labels(clips, attributes=data.ATTRIBUTES):
    """name -> (B,) int64 label index (-1 where a clip lacks the attribute)."""
    return {name: torch.tensor([values.index(c.attributes[name]) if c.attributes.get(name) in values else -1
                                for c in clips]) for name, values in attributes.items()}


def batched(fn, wav, size=64):
    """Apply fn to (B, ...) in chunks of `size` and concatenate (bounds the STFT memory)."""
    return torch.cat([fn(wav[i:i + size]) for i in range(0, len(wav), size)])


def stack_wavs(wavs, n=None):
    """List of (1, N_i) -> (B, 1, n), cropped or zero-padded to n (default: the longest)."""
    n = max(w.shape[-1] for w in wavs) if n is None else n
    return torch.stack([F.pad(w[..., :n], (0, n - min(n, w.shape[-1]))) for w in wavs])


def train_probe(train_clips, heldout_clips, seed=0, steps=400, n_augment=2, hidden=64, attributes=None):
    """Fit the probe on real training clips (plus degraded copies); report held-out accuracy.
    `attributes` (name -> label values) defaults to data.ATTRIBUTES.

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


# ==== the metrics =====================================================================================
def frechet_distance(x, y):
    """Fréchet distance between Gaussians fitted to two sets of embeddings (paper: FAD, on VGGish).

        d² = ||μ_x − μ_y||² + Tr(Σ_x + Σ_y − 2 (Σ_x Σ_y)^{1/2})

    Tr((Σ_x Σ_y)^{1/2}) = Tr((A Σ_y A)^{1/2}) with A = Σ_x^{1/2}: the second matrix is symmetric PSD,
    so both square roots come from an eigendecomposition (eigh), in float64.
    Args: x (N, H), y (M, H). Returns a float >= 0.
    """
    x, y = x.double(), y.double()
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x, y: expected (N, H) and (M, H), got {tuple(x.shape)} and {tuple(y.shape)}")
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.T), torch.cov(y.T)  # (H, H) each, unbiased as in FAD
    return float(((mu_x - mu_y) ** 2).sum() + cov_x.trace() + cov_y.trace() - 2 * trace_sqrt_product(cov_x, cov_y))


def sqrtm_psd(matrix):
    """Square root of a symmetric PSD matrix: V diag(sqrt(λ)) Vᵀ (tiny negative λ from rounding → 0)."""
    eigenvalues, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def trace_sqrt_product(cov_x, cov_y):
    root_x = sqrtm_psd(cov_x)
    return torch.linalg.eigvalsh(root_x @ cov_y @ root_x).clamp(min=0).sqrt().sum()


def kl_divergence(p, q, eps=1e-6):
    """KL(p ‖ q) = Σ_c p_c log(p_c / q_c) per row, averaged over rows (paper: PaSST labels of the
    reference vs of the generated music). p, q: (B, n_classes) probabilities. Returns a float."""
    if p.shape != q.shape:
        raise ValueError(f"p, q: same shape expected, got {tuple(p.shape)} and {tuple(q.shape)}")
    p, q = p.double().clamp(min=eps), q.double().clamp(min=eps)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    return float((p * (p.log() - q.log())).sum(-1).mean())


def chroma_cosine(reference, generated, sample_rate):
    """The paper's melody metric (§4.2): cosine similarity between the quantized (argmax one-hot)
    chroma of the reference melody and of the generated audio, per frame, averaged over frames (and
    over the batch). For one-hot frames the cosine is 1 where the pitch classes agree, else 0.
    Args: reference, generated (B, 1, N) at sample_rate. Returns a float in [0, 1]."""
    from conditioners import ChromaExtractor
    extractor = ChromaExtractor(sample_rate)
    ref, gen = extractor(reference.float()), extractor(generated.float())  # (B, F, 12) each
    n_frames = min(ref.shape[1], gen.shape[1])
    ref, gen = ref[:, :n_frames], gen[:, :n_frames]
    return float(F.cosine_similarity(ref, gen, dim=-1, eps=1e-8).mean())  # (B, F) -> mean


def si_snr(reference, estimate, eps=1e-8):
    """Scale-invariant SNR in dB (Le Roux et al., 2019), per clip: project the estimate on the
    reference, s = <ŝ, r> r / ||r||², then 10 log10(||s||² / ||ŝ − s||²). (B, 1, N) each -> (B,)."""
    r = reference - reference.mean(-1, keepdim=True)
    e = estimate - estimate.mean(-1, keepdim=True)
    target = (e * r).sum(-1, keepdim=True) / (r.pow(2).sum(-1, keepdim=True) + eps) * r
    return 10 * torch.log10(target.pow(2).sum(-1) / ((e - target).pow(2).sum(-1) + eps) + eps).flatten()


def mel_distance(reference, estimate, sample_rate):
    """Mean L1 distance between log-mel spectrograms (64 bands, 1024-point STFT, hop 256); lower is
    better. (B, 1, N) each -> float."""
    bank = mel_filterbank(1024, 64, sample_rate)
    def log_mel(wav):
        spec = torch.stft(wav[:, 0], 1024, 256, window=torch.hann_window(1024), return_complex=True).abs() ** 2
        return torch.log10(bank @ spec + 1e-5)  # (B, 64, T)
    return float((log_mel(reference) - log_mel(estimate)).abs().mean())


@torch.no_grad()
def codec_metrics(codec, clips, batch_size=16):
    """Held-out clips through the trained codec: mel distance, SI-SNR (dB), bitrate (kbps), perplexity.
    Also returns the reconstructions (B, 1, N) for the probe's "real audio through the codec" row."""
    wav = stack_wavs([c.wav for c in clips])  # (B, 1, N)
    codes = torch.cat([codec.encode(wav[i:i + batch_size]) for i in range(0, len(wav), batch_size)])  # (B, K, T)
    recon = torch.cat([codec.decode(codes[i:i + batch_size]) for i in range(0, len(codes), batch_size)])
    recon = recon[..., :wav.shape[-1]]  # the decoder returns whole frames: (B, 1, T·hop) -> (B, 1, N)
    # Bitrate: each frame sends n_q indices of log2(codebook_size) bits (paper: 4 × 11 bits × 50 Hz = 2.2 kbps).
    bitrate = codec.n_q * math.log2(codec.codebook_size) * codec.frame_rate / 1000
    return dict(mel_distance=mel_distance(wav, recon, codec.sample_rate), si_snr_db=float(si_snr(wav, recon).mean()),
                bitrate_kbps=bitrate, perplexity=perplexity(codes, codec.codebook_size)), recon


# ==== scoring generated audio with the probe ==========================================================
@torch.no_grad()
def probe_outputs(probe, audio, sample_rate):
    """audio (B, 1, N) -> (features (B, E), probabilities name -> (B, n_values), embedding (B, H))."""
    features = batched(lambda wav: probe_features(wav, sample_rate), audio)
    return features, {k: v.softmax(-1) for k, v in probe(features).items()}, probe.embed(features)


def score_audio(probe, audio, sample_rate, clips, reference):
    """Table 1's three numbers for audio generated from `clips`' descriptions (one clip per item).

    reference: probe_outputs of the real clips' (probs) and of all real held-out clips (embedding).
    Returns {"adherence", "adherence_per_attribute", "kl", "frechet", "beat"}.
    """
    features, probs, embedding = probe_outputs(probe, audio, sample_rate)
    per_attribute = probe_accuracy(probe, features, clips, stated_only=True)
    # KL(reference ‖ generated) per attribute (paper: on PaSST's 527 labels), then averaged.
    kl = mean(kl_divergence(reference["probs"][name], probs[name]) for name in probs)
    return dict(adherence=mean(per_attribute.values()), adherence_per_attribute=per_attribute, kl=kl,
                frechet=frechet_distance(embedding, reference["embedding"]),
                beat=float(batched(lambda wav: beat_strength(wav, sample_rate), audio).mean()))


def generate_in_batches(fn, clips, batch_size=16, seed=0):
    """fn(clips of one batch) -> (b, 1, N); seeded once, so a condition is reproducible. -> (B, 1, N)."""
    torch.manual_seed(seed)
    return torch.cat([fn(clips[i:i + batch_size]) for i in range(0, len(clips), batch_size)])


def stack_melodies(clips):
    """The melody stems (the paper's drum-free chroma source), or the mix where there is none: (b, 1, N)."""
    return stack_wavs([c.melody_wav if c.melody_wav is not None else c.wav for c in clips])


# ==== Tables 1 and 2 ==================================================================================
def evaluate_run(run_dir, data_dir, n=48, seed=0, batch_size=16, n_listen=4, out_dir=None):
    """Codec metrics, Table 1 (conditioning, CFG), Table 2 (melody), audio page. Returns results dict."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir or run_dir / "eval")
    probe, probe_report = load_or_train_probe(run_dir, data_dir, seed)
    check_probe(probe_report)
    model = MusicGen.load(run_dir)
    sr = model.sample_rate
    heldout = data.load_clips(data_dir, sr, split="heldout") or data.load_clips(data_dir, sr)
    items = heldout[:n]
    duration = items[0].wav.shape[-1] / sr
    real = probe_outputs(probe, stack_wavs([c.wav for c in heldout]), sr)
    reference = dict(probs={k: v[:len(items)] for k, v in real[1].items()}, embedding=real[2])

    codec, recon = codec_metrics(model.codec, items, batch_size)
    audio = {}  # condition -> (B, 1, N)
    seconds = {}
    from_text = lambda b: model.generate([c.description for c in b])  # one batch of descriptions
    conditions = [  # (name, cfg_coef, how to generate one batch)
        ("unconditional", 3.0, lambda b: model.generate_unconditional(len(b))),
        # cfg_coef 1 is the conditional model alone: l_null + 1·(l_cond − l_null) = l_cond; None skips
        # the null half of the batch, which gives the same logits at half the cost.
        ("text, cfg_coef 1", None, from_text),
        (TEXT, DEFAULT_CFG_COEF, from_text),  # our default
        ("text, cfg_coef 3", 3.0, from_text),  # the paper's
        (MELODY, DEFAULT_CFG_COEF,
         lambda b: model.generate_with_chroma([c.description for c in b], stack_melodies(b), sr)),
    ]
    for name, cfg_coef, fn in conditions:
        model.set_generation_params(duration=duration, use_sampling=True, top_k=250, top_p=0.0, temperature=1.0,
                                    cfg_coef=cfg_coef)
        started = time.perf_counter()
        audio[name] = generate_in_batches(fn, items, batch_size, seed)[..., :items[0].wav.shape[-1]]
        seconds[name] = time.perf_counter() - started
        print(f"generated {len(items)} x {duration:g} s, {name}: {seconds[name]:.1f} s")

    table1 = {"real clips (ceiling)": score_audio(probe, stack_wavs([c.wav for c in items]), sr, items, reference),
              "real clips through the codec": score_audio(probe, recon, sr, items, reference)}
    for name in [name for name in audio if name != MELODY]:  # every generated row but Table 2's melody one
        table1[name] = score_audio(probe, audio[name], sr, items, reference)
    melody_ref = stack_melodies(items)
    table2 = {"text only": dict(chroma_cosine=chroma_cosine(melody_ref, audio[TEXT], sr),
                                adherence=table1[TEXT]["adherence"]),
              "text + melody": dict(chroma_cosine=chroma_cosine(melody_ref, audio[MELODY], sr),
                                    adherence=score_audio(probe, audio[MELODY], sr, items,
                                                          reference)["adherence"]),
              "real clips (ceiling)": dict(chroma_cosine=chroma_cosine(melody_ref, stack_wavs([c.wav for c in items]), sr),
                                           adherence=table1["real clips (ceiling)"]["adherence"])}
    headline = table1[TEXT]  # the default guidance
    results = {
        "codec.mel_distance": codec["mel_distance"], "codec.si_snr_db": codec["si_snr_db"],
        "codec.bitrate_kbps": codec["bitrate_kbps"], "codec.perplexity": codec["perplexity"],
        "probe.accuracy": probe_report["accuracy"], "probe.accuracy_degraded": probe_report["accuracy_degraded"],
        "probe.accuracy_codec": table1["real clips through the codec"]["adherence"],
        "text.adherence": headline["adherence"], "text.kl": headline["kl"], "text.frechet": headline["frechet"],
        "text.cfg_coef": DEFAULT_CFG_COEF, "text.beat": headline["beat"],
        "real.beat": table1["real clips (ceiling)"]["beat"],
        "melody.chroma_cosine": table2["text + melody"]["chroma_cosine"],
        "melody.chroma_cosine_text_only": table2["text only"]["chroma_cosine"],
        # seconds of compute per second of audio, CFG on (batch of 2B), codec decoding included
        "generation.real_time_factor": seconds[TEXT] / (len(items) * duration),
        "n_items": len(items), "seed": seed, "duration": duration,
        "probe_per_attribute": probe_report["per_attribute"], "table1": table1, "table2": table2,
    }
    # The listening page: the first n_listen items under every condition.
    entries = []
    for i, clip in enumerate(items[:n_listen]):
        takes = [("real clip", clip.wav), ("melody stem (chroma source)", stack_melodies([clip])[0]),
                 ("real clip through the codec", recon[i])] + [(name, audio[name][i]) for name in audio]
        for j, (name, wav) in enumerate(takes):
            path = out_dir / "samples" / f"item{i}_{j}.wav"
            data.write_audio(path, wav.cpu(), sr)
            entries.append((f"item {i}: {clip.description}", path.relative_to(out_dir).as_posix(), name))
    results["listening_page"] = str(write_listening_page(out_dir, entries))
    return results


def write_listening_page(out_dir, entries, title="MusicGen from scratch: evaluation samples"):
    """Plain HTML, one <audio> per sample, relative paths. entries: (section, relative wav path, caption)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    section = None
    for this_section, path, caption in entries:
        if this_section != section:
            section = this_section
            lines.append(f"<h2>{html.escape(section)}</h2>")
        lines.append(f"<figure><audio controls preload='none' src='{html.escape(path, quote=True)}'></audio>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    lines.append("</body></html>")
    page = out_dir / "index.html"
    page.write_text("\n".join(lines) + "\n")
    return page


# ==== Table 3: the interleaving patterns ==============================================================
# The paper's Table 3 (MusicGen 300M, §4.3): flattening scores best on the objective metrics but needs
# K times more decoding steps; the delay pattern comes close at the step count of parallel, which is
# why MusicGen uses it ("flattening improves generation, but at a high computational cost, while
# similar performance can be reached for a fraction of this cost using a simple delaying approach").
# Our tiny runs may order them differently: at a fixed number of training steps and a fixed window,
# a pattern with K times longer sequences trains K times slower per step and sees the same frames.
def ablate_patterns(run_dir, data_dir, steps=500, n=48, seed=0, device="cpu", preset=None, batch_size=16,
                    patterns=None):
    """Train one LM per pattern with the same budget on the same codec, then score each. -> {pattern: row}."""
    import train
    from patterns import PATTERN_NAMES, make_pattern
    run_dir = Path(run_dir)
    preset = train.PRESETS["tiny"] if preset is None else preset
    # The paper's LM reads every codebook; ours reads codebook 1 only (LMConfig.input_codebooks). A
    # flattened step holds one codebook's token, so reading codebook 1 would hide the others: compare
    # the patterns as the paper does, every codebook read.
    preset = replace(preset, lm=replace(preset.lm, input_codebooks=preset.lm.n_q))
    probe, probe_report = load_or_train_probe(run_dir, data_dir, seed)
    check_probe(probe_report)
    rows = {}
    heldout, reference = None, None
    # Encode the dataset once with the frozen codec; every pattern's LM trains on the same codes.
    from encodec import EncodecModel
    codec, _ = EncodecModel.load(run_dir / "codec.pt", device)
    clips = data.load_clips(data_dir, codec.sample_rate)
    encoded = (clips, train.encode_dataset(codec, clips, device))
    for name in (patterns or PATTERN_NAMES):
        out = run_dir / "ablation" / name
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "codec.pt", out / "codec.pt")  # the same frozen codec for every pattern
        summary = train.train_lm(out, data_dir, preset, pattern=name, max_steps=steps, seed=seed, device=device,
                                 encoded=encoded)
        model = MusicGen.load(out)
        sr = model.sample_rate
        if heldout is None:
            heldout = data.load_clips(data_dir, sr, split="heldout") or data.load_clips(data_dir, sr)
            real = probe_outputs(probe, stack_wavs([c.wav for c in heldout]), sr)
            items = heldout[:n]
            reference = dict(probs={k: v[:len(items)] for k, v in real[1].items()}, embedding=real[2])
        duration = items[0].wav.shape[-1] / sr
        model.set_generation_params(duration=duration)  # the default guidance
        started = time.perf_counter()
        audio = generate_in_batches(lambda b: model.generate([c.description for c in b]), items, batch_size, seed)
        seconds = time.perf_counter() - started
        score = score_audio(probe, audio[..., :items[0].wav.shape[-1]], sr, items, reference)
        rows[name] = dict(valid_nll_per_codebook=summary["valid_loss_per_codebook"],
                          valid_nll=float(mean(summary["valid_loss_per_codebook"])),
                          adherence=score["adherence"], kl=score["kl"], frechet=score["frechet"],
                          decoding_steps_10s=make_pattern(name, model.lm.cfg.n_q).decoding_steps(
                              round(10 * model.frame_rate)),
                          generation_seconds=seconds, real_time_factor=seconds / (len(items) * duration),
                          train_seconds=summary["seconds"], steps=summary["steps"])
        print(f"{name}: {rows[name]}")
    return rows


# ==== reporting =======================================================================================
def results_markdown(results):
    """Tables 1-3 as markdown for the README (only the parts present in `results`)."""
    f3 = lambda x: f"{x:.3f}"
    lines = [f"Evaluated on {results.get('n_items', '?')} held-out descriptions (seed {results.get('seed', 0)}); "
             f"probe held-out accuracy {f3(results['probe.accuracy'])} (must be ≥ 0.95 to trust the metrics)."]
    if "codec.mel_distance" in results:
        lines += ["", "**Codec** (held-out clips): mel distance {}, SI-SNR {:.2f} dB, bitrate {:.2f} kbps, "
                  "perplexity per codebook {}.".format(f3(results["codec.mel_distance"]), results["codec.si_snr_db"],
                                                       results["codec.bitrate_kbps"],
                                                       " / ".join(f"{p:.0f}" for p in results["codec.perplexity"]))]
    if "table1" in results:
        lines += ["", "**Table 1 analogue** (paper: conditioning and CFG). Adherence ↑ (chance ≈ 0.4), KL ↓, Fréchet ↓; "
                  "beat: onset periodicity (ours, `beat_strength`; real ≈ 0.6).", "",
                  "| audio | adherence | KL | Fréchet | beat |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {f3(v['adherence'])} | {f3(v['kl'])} | {f3(v['frechet'])} | "
                  f"{v['beat']:.2f} |" if "beat" in v else  # results.json written before the beat column
                  f"| {k} | {f3(v['adherence'])} | {f3(v['kl'])} | {f3(v['frechet'])} | – |"
                  for k, v in results["table1"].items()]
    if "table2" in results:
        guidance = f", cfg_coef {results['text.cfg_coef']:g}" if "text.cfg_coef" in results else ""
        lines += ["", f"**Table 2 analogue** (paper: melody conditioning{guidance}). Chroma cosine ↑, "
                  "adherence ↑.", "",
                  "| audio | chroma cosine | adherence |", "| --- | --- | --- |"]
        lines += [f"| {k} | {f3(v['chroma_cosine'])} | {f3(v['adherence'])} |" for k, v in results["table2"].items()]
        lines += ["", f"Real-time factor (CFG on, CPU): {results['generation.real_time_factor']:.3f} s per s of audio."]
    if "table3" in results:
        lines += ["", f"**Table 3 analogue** (paper: interleaving patterns), {results.get('ablation_steps')} LM steps each. "
                  "Paper's finding (§4.3): flattening best but K× the decoding steps; delay close to it "
                  "at the step count of parallel.", "",
                  "| pattern | valid NLL per codebook | adherence | Fréchet | decoding steps for 10 s | generation s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {' / '.join(f'{x:.2f}' for x in v['valid_nll_per_codebook'])} | {f3(v['adherence'])} | "
                  f"{f3(v['frechet'])} | {v['decoding_steps_10s']} | {v['generation_seconds']:.1f} |"
                  for k, v in results["table3"].items()]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="The paper's metrics (§4.2) in miniature: Tables 1-2 for a trained run, "
                                            "and with --ablate-patterns Table 3 (one LM per interleaving pattern).")
    p.add_argument("--run", default="runs/tiny", help="run directory with codec.pt and lm.pt (from train.py)")
    p.add_argument("--data", default="data/toy", help="dataset folder (its held-out split is evaluated)")
    p.add_argument("--json", help="results file (default RUN/eval/results.json); results.md goes beside it")
    p.add_argument("--n", type=int, default=48, help="held-out descriptions to generate from (default 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="items generated at once")
    p.add_argument("--ablate-patterns", action="store_true", help="Table 3: train one LM per pattern in RUN/ablation/")
    p.add_argument("--steps", type=int, default=500, help="LM steps per pattern for --ablate-patterns")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run = Path(args.run)
    for name in ("codec.pt",) + (() if args.ablate_patterns else ("lm.pt",)):
        if not (run / name).exists():
            raise SystemExit(f"error: {run / name} not found (train first: python train.py --out {run})")
    json_path = Path(args.json) if args.json else run / "eval" / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    # Tables 1-2 and Table 3 come from separate commands; each keeps what the other wrote.
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    started = time.perf_counter()
    if args.ablate_patterns:
        _, probe_report = load_or_train_probe(run, args.data, args.seed)
        results["probe.accuracy"] = probe_report["accuracy"]
        results["table3"] = ablate_patterns(run, args.data, steps=args.steps, n=args.n, seed=args.seed,
                                            device=args.device, batch_size=args.batch_size)
        results["ablation_steps"] = args.steps
        results["ablation_command"] = " ".join(["python evaluate.py"] + (argv if argv is not None else sys.argv[1:]))
    else:
        results.update(evaluate_run(run, args.data, n=args.n, seed=args.seed, batch_size=args.batch_size,
                                    out_dir=json_path.parent))
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    markdown = results_markdown(results)
    (json_path.parent / "results.md").write_text(markdown)
    print(markdown)
    print(f"wrote {json_path} and {json_path.parent / 'results.md'} in {time.perf_counter() - started:.0f} s")
    if "listening_page" in results:
        print(f"listen: open {results['listening_page']} in a browser")


if __name__ == "__main__":
    main()
