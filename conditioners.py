"""Conditioning (paper §2.4): text → a sequence the LM cross-attends to; melody → chroma the LM reads.

- Text: the paper encodes the description with a frozen, pretrained T5 and projects it to the LM
  width; the LM cross-attends to it. Deviation: no weights can be downloaded here, so a word-level
  `Tokenizer` and a tiny transformer `TextEncoder` are trained jointly with the LM.
- Melody: the paper takes the chromagram of the (drum- and bass-free) reference, keeps only the
  dominant pitch class per frame (one-hot, "to avoid overfitting"), and *prepends* it to the LM input.
  `ChromaExtractor` computes it by hand as the reference implementation does (torch.stft, librosa's
  chroma filter bank). The LM offers both fusions (lm.py, LMConfig.melody_fusion): "prepend", the
  paper's, and "sum", the chroma added to each step's input, which the tiny recipe may use instead.
- Classifier-free guidance (§3) needs a model that also knows the null condition: `ConditionDropout`
  replaces a sample's conditions by the null ones during training (paper: p = 0.3), and drops the
  melody alone with its own probability (paper: 0.2).

Shape letters: B batch, L words, D width, C channels, N samples, F chroma frames, S steps.
Data flow: descriptions ─Tokenizer─▶ ids (B, L) ─TextEncoder─▶ (B, L, D) ─▶ LM cross-attention;
           melody wav (B, C, N) ─ChromaExtractor─▶ chroma (B, F, 12) ─▶ Linear ─▶ prefix (B, F, D)
           ("prepend") or one vector per step (B, S, D) ("sum").
"""
import math
import re
import unicodedata
import warnings
from collections import Counter

import torch
import torch.nn as nn

from audio import hz_to_midi

PAD, UNK = 0, 1


class Tokenizer:
    """Word-level tokenizer: lowercase, accents folded ("café" -> "cafe"), words = runs of letters or
    digits ("120 bpm" -> "120", "bpm"). Ids 0 = <pad>, 1 = <unk>. Only "" (or a text without any
    word, with a warning) is the null condition; unknown words are <unk>, with a warning."""

    def __init__(self, vocab):
        self.vocab = list(vocab)  # plain list of str: stored as is in the LM checkpoint
        assert self.vocab[:2] == ["<pad>", "<unk>"], "vocab must start with <pad>, <unk>"
        self.index = {word: i for i, word in enumerate(self.vocab)}
        self.warned = set()

    @staticmethod
    def words(text: str):
        folded = unicodedata.normalize("NFKD", text.lower())  # "é" -> "e" + a combining accent
        return re.findall(r"[a-z0-9]+", "".join(c for c in folded if not unicodedata.combining(c)))

    @classmethod
    def build(cls, descriptions, min_count: int = 1):
        counts = Counter(word for text in descriptions for word in cls.words(text))
        return cls(["<pad>", "<unk>"] + sorted(w for w, c in counts.items() if c >= min_count))

    def encode(self, texts, max_len=None):
        """texts: list of B strings → ids (B, L) int64 and mask (B, L) bool (True = a real word).

        An empty description is the null condition: an all-False mask row. L is at least 1.
        """
        rows = []
        for text in texts:
            if text.strip() and not self.words(text) and text not in self.warned:
                self.warned.add(text)
                warnings.warn(f"description {text!r} has no word: it is read as the null condition")
            ids = []
            for word in self.words(text):
                if word not in self.index and word not in self.warned:
                    self.warned.add(word)
                    warnings.warn(f"unknown word {word!r} is read as <unk> (not in the training descriptions)")
                ids.append(self.index.get(word, UNK))
            rows.append(ids[:max_len] if max_len else ids)
        L = max([1] + [len(r) for r in rows])
        ids = torch.full((len(rows), L), PAD, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != PAD


def text_tokens(tokenizer, descriptions):
    """Descriptions → ids (B, L), mask (B, L), with "" the null condition: an all-False mask row. The
    word tokenizer gives "" no token; T5's gives it one (</s>), which the mask removes here, as the
    reference library does for an empty description (in training, condition dropout; in generation,
    guidance's null branch and unconditional samples)."""
    ids, mask = tokenizer.encode(descriptions)
    return ids, mask & torch.tensor([d != "" for d in descriptions])[:, None]  # (B, L)


def word_dropout(texts, p: float, generator: torch.Generator):
    """Drop each word with probability p (text augmentation; audiocraft uses 0.3 on T5 inputs)."""
    out = []
    for text in texts:
        words = text.split()
        keep = torch.rand(len(words), generator=generator) >= p
        out.append(" ".join(w for w, k in zip(words, keep.tolist()) if k))
    return out


class TextEncoder(nn.Module):
    """A tiny non-causal transformer over words, projected to the LM width (paper: T5 + linear)."""

    def __init__(self, vocab_size: int, dim: int, n_layers: int, n_heads: int, out_dim: int, max_len: int = 64):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.position = nn.Embedding(max_len, dim)  # learned positions: descriptions are short
        layer = nn.TransformerEncoderLayer(dim, n_heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True, bias=False)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim, bias=False)
        self.projection = nn.Linear(dim, out_dim, bias=False)
        self.max_len = max_len

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        """ids, mask (B, L) → condition (B, L, out_dim) with padded positions zeroed, and mask (B, L)."""
        B, L = ids.shape
        if mask.shape != (B, L):
            raise ValueError(f"mask must be {(B, L)} like ids, got {tuple(mask.shape)}")
        if L > self.max_len:
            raise ValueError(f"a description of {L} words is longer than the text encoder's {self.max_len} positions")
        x = self.embedding(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))  # (B, L) -> (B, L, dim)
        # A row with no word at all (the null condition, an empty description) would make every
        # attention row fully masked, and softmax over nothing is NaN (a reported bug in a port).
        # Such rows attend to their (padding) positions instead, and are zeroed below anyway.
        empty = ~mask.any(dim=1)  # (B,)
        attend = mask | empty[:, None]
        x = self.encoder(x, src_key_padding_mask=~attend)
        x = self.projection(self.norm(x))  # (B, L, dim) -> (B, L, out_dim)
        return x * mask[..., None], mask


def chroma_filterbank(sample_rate: int, n_fft: int) -> torch.Tensor:
    """(12, n_fft // 2 + 1) weights: FFT bin → pitch class (librosa's chroma filter bank, as the
    reference's MusicgenMelodyFeatureExtractor builds it: tuning 0, L2 norm, octave weighting (5, 2),
    rows starting at C).

    Bin k ≥ 1 (frequency f_k = k·sr / n_fft) sits at the pitch p_k = 69 + 12·log2(f_k / 440), a MIDI
    number (A4 = 440 Hz, C4 = 60); the 0 Hz bin has no pitch and gets a made-up p_0 = p_1 − 18, 1.5
    octaves below bin 1. Its weight for pitch class c (0 = C, ..., 11 = B) is a Gaussian of the distance
    to the nearest note of that class, as wide as the bin is in semitones (a low, wide bin spreads over
    several classes; σ is never under half a semitone), each column L2-normalised over the 12 classes,
    then scaled by a Gaussian over octaves centred on A5 (MIDI 81 = 880 Hz) with a half-width of two
    octaves, which fades out rumble and high harmonics:

        d_ck = ((p_k − c + 6) mod 12) − 6  ∈ [−6, 6)      w_k = max(p_{k+1} − p_k, 1)
        G_ck = exp(−½ (d_ck / (w_k / 2))²)                 (σ = w_k / 2 semitones)
        W_ck = G_ck / ‖G_·k‖₂ · exp(−½ ((p_k − 81) / 24)²)  (L2 over c, then the octave weighting)
    """
    k = torch.arange(1, n_fft // 2 + 2, dtype=torch.float64)  # bins 1 .. n_fft/2 + 1 (the last one for w)
    pitch = hz_to_midi(k * sample_rate / n_fft)
    pitch = torch.cat([pitch[:1] - 18, pitch])  # p_0 .. p_{n_fft/2 + 1}
    width = (pitch[1:] - pitch[:-1]).clamp(min=1.0)  # w_0 .. w_{n_fft/2}
    pitch = pitch[:-1]  # (n_bins,)
    classes = torch.arange(12, dtype=torch.float64)[:, None]  # c = 0 (C) .. 11 (B)
    distance = torch.remainder(pitch[None, :] - classes + 6, 12) - 6  # (12, n_bins), in [-6, 6)
    bank = torch.exp(-0.5 * (distance / (width / 2)) ** 2)
    bank = bank / bank.norm(dim=0, keepdim=True)  # each bin's 12 weights have unit L2 norm
    bank = bank * torch.exp(-0.5 * ((pitch - 81) / 24) ** 2)  # octave weighting around A5
    return bank.float()


class ChromaExtractor(nn.Module):
    """Chromagram → dominant pitch class per frame, one-hot (paper §2.4), as the reference computes it.

    Paper: STFT of 2^14 samples with hop 2^12 at 32 kHz. We keep that time resolution at any rate:
    n_fft ≈ 0.512 s and hop ≈ 0.128 s (8192 and 2048 at 16 kHz) → `frame_rate` ≈ 7.8 frames per second.
    With torch.stft(center=True) a clip of N ≥ n_fft samples gives F = N // hop_length + 1 frames; a
    shorter one is first zero-padded on both sides to n_fft samples.

    Per frame: power spectrum |X_k|² / Σ w² (Hann window w, as torchaudio's Spectrogram(normalized=True)),
    chroma = filterbank @ power, divided by its maximum (at least 1e-6), then, with argmax=True, one-hot
    at the loudest class. A silent frame is all zero, so its argmax is class 0: the reference's null
    melody is a one-hot C, and so is ours by default.

    gate_silence=True (a documented deviation, for the tiny recipe and metrics.chroma_cosine): frames
    quieter than a sine of amplitude ~0.004 (-48 dB) give an all-zero vector instead, so rests, the end
    of a short melody and the null melody all look the same, and none of them looks like a C.
    """

    def __init__(self, sample_rate: int, n_fft: int = None, hop_length: int = None, argmax: bool = True,
                 gate_silence: bool = False):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft or 2 ** round(math.log2(sample_rate * 2 ** 14 / 32000))
        self.hop_length = hop_length or self.n_fft // 4
        self.frame_rate = sample_rate / self.hop_length
        self.argmax, self.gate_silence = argmax, gate_silence
        # Plain float32 tensors, not buffers: a model cast to bfloat16 (`.to(dtype)`) keeps them exact.
        # They follow the audio's device when used.
        window = torch.hann_window(self.n_fft)  # periodic, as torch.stft and torchaudio expect
        self.window, self.filterbank = window, chroma_filterbank(sample_rate, self.n_fft)
        # Silence threshold on the chroma's maximum. A sine of amplitude A at a bin's frequency peaks at
        # |X| = A·Σw/2 = A·n_fft/4 (Hann: Σw = n_fft/2), i.e. a normalised power (A·n_fft/4)² / Σw²
        # = A²·n_fft/6 (Σw² = 3·n_fft/8). The filter bank weighs a bin at a note's pitch by ~0.98 times
        # the octave weighting (≤ 1), and the two neighbouring bins of the Hann main lobe add half of
        # the peak again, so the sine's chroma maximum is this power within a factor of ~2 from C3 up
        # (the octave weighting lowers the bass further): the threshold is that of A = 0.004 (-48 dB).
        self.silence = (0.004 * self.n_fft / 4) ** 2 / float(window.pow(2).sum())

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, C, N) at self.sample_rate → chroma (B, F, 12)."""
        if wav.dim() != 3:
            raise ValueError(f"wav must be (B, C, N), got shape {tuple(wav.shape)}")
        # In float32 whatever the model's dtype: a power spectrum of 16384 points overflows float16.
        mono = wav.float().mean(dim=1)  # (B, C, N) -> (B, N): any channel count
        if mono.shape[-1] < self.n_fft:  # centred zero padding, as the reference
            pad = self.n_fft - mono.shape[-1]
            mono = torch.nn.functional.pad(mono, (pad // 2, pad // 2 + pad % 2))
        window = self.window.to(mono.device)
        spec = torch.stft(mono, self.n_fft, self.hop_length, window=window, center=True, pad_mode="reflect",
                          return_complex=True).abs() ** 2 / window.pow(2).sum()  # (B, N) -> (B, n_bins, F)
        chroma = torch.einsum("cf,bft->btc", self.filterbank.to(mono.device), spec)  # (B, n_bins, F) -> (B, F, 12)
        peak = chroma.amax(dim=-1, keepdim=True)  # (B, F, 1): the inf-norm, as chroma ≥ 0
        chroma = chroma / peak.clamp(min=1e-6)  # max-normalise each frame
        if self.argmax:  # keep the dominant bin; ties (a silent frame) go to the first class, C
            chroma = torch.nn.functional.one_hot(chroma.argmax(dim=-1), 12).float()
        if self.gate_silence:
            chroma = chroma.masked_fill(peak < self.silence, 0.0)
        return chroma


class ConditionDropout:
    """Training-time condition dropout for classifier-free guidance (§3).

    With probability p_cfg a sample gets the null condition (empty description, null melody), so one
    model learns both p(x | c) and p(x); otherwise, with probability p_melody, its melody alone is
    dropped, so text-only prompts stay in-distribution for a model trained with melodies. The null
    melody is `null_chroma`, (F, 12) or (1, F, 12): the chroma of silence, which is a one-hot C per frame
    for the reference's extractor and all zeros with gate_silence=True (None, the default: all zeros).
    """

    def __init__(self, p_cfg: float = 0.3, p_melody: float = 0.2):
        self.p_cfg, self.p_melody = p_cfg, p_melody

    def draw(self, B: int, generator: torch.Generator):
        """Which of B samples get the null condition, and which lose their melody: two (B,) bool masks."""
        draw = torch.rand(B, 2, generator=generator)
        null = draw[:, 0] < self.p_cfg
        return null, null | (draw[:, 1] < self.p_melody)

    def __call__(self, descriptions, chroma: torch.Tensor, generator: torch.Generator = None, null_chroma=None,
                 dropped=None):
        """Apply fresh draws from `generator`, or `dropped` = (null, drop_melody) drawn beforehand (a
        process training on a slice of a batch applies its slice of the whole batch's draws)."""
        B = len(descriptions)
        if chroma.shape[0] != B:
            raise ValueError(f"{B} descriptions but chroma has batch {chroma.shape[0]}")
        null, drop_melody = self.draw(B, generator) if dropped is None else dropped
        descriptions = ["" if n else d for d, n in zip(descriptions, null.tolist())]
        if null_chroma is None:
            null_chroma = torch.zeros(chroma.shape[1:])
        null_chroma = null_chroma.to(chroma).reshape(1, *chroma.shape[1:])  # (F, 12) or (1, F, 12) -> (1, F, 12)
        chroma = torch.where(drop_melody.to(chroma.device)[:, None, None], null_chroma, chroma)
        return descriptions, chroma
