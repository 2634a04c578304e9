"""Conditioning (paper §2.4): text → a sequence the LM cross-attends to; melody → a chroma prefix.

- Text: the paper encodes the description with a frozen, pretrained T5 and projects it to the LM
  width; the LM cross-attends to it. Deviation: no weights can be downloaded here, so a word-level
  `Tokenizer` and a tiny transformer `TextEncoder` are trained jointly with the LM.
- Melody: the paper takes the chromagram of the (drum- and bass-free) reference, keeps only the
  dominant pitch class per frame (one-hot, "to avoid overfitting"), and *prepends* it to the LM input.
  `ChromaExtractor` computes it with torch.stft and a chroma filterbank built by hand (musicgen.py
  adds it to each step instead of prepending it: see MusicLM).
- Classifier-free guidance (§3) needs a model that also knows the null condition: `ConditionDropout`
  replaces a sample's conditions by the null ones during training (paper: p = 0.3), and drops the
  melody alone with its own probability (paper: 0.2).

Shape letters: B batch, L words, D width, C channels, N samples, F chroma frames.
Data flow: descriptions ─Tokenizer─▶ ids (B, L) ─TextEncoder─▶ (B, L, D) ─▶ LM cross-attention;
           melody wav (B, C, N) ─ChromaExtractor─▶ chroma (B, F, 12) ─▶ Linear ─▶ prefix (B, F, D).
"""
import math
import re
import unicodedata
import warnings
from collections import Counter

import torch
import torch.nn as nn

from audio import hz_to_midi, resample

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


def chroma_filterbank(sample_rate: int, n_fft: int, f_min: float = 60.0, f_max: float = 5000.0) -> torch.Tensor:
    """(12, n_fft // 2 + 1) weights: FFT bin → pitch class, a Gaussian of 1/2 semitone around each pitch.

    A bin at frequency f sits at pitch p = 69 + 12·log2(f / 440) (MIDI numbers, A4 = 440 Hz); its weight
    for pitch class c is Σ_octaves exp(-½((p - m)/σ)²) over the MIDI notes m ≡ c (mod 12), σ = 0.5.
    Bins outside [f_min, f_max] are ignored: below, the FFT cannot resolve semitones; above, only
    harmonics and noise live.
    """
    freqs = torch.arange(n_fft // 2 + 1) * sample_rate / n_fft
    inside = (freqs >= f_min) & (freqs <= min(f_max, sample_rate / 2))
    pitch = hz_to_midi(freqs.clamp(min=1e-3))  # (n_bins,)
    # Distance to the nearest note of each pitch class, wrapped to [-6, 6) semitones.
    distance = (pitch[None, :] - torch.arange(12)[:, None] + 6) % 12 - 6  # (12, n_bins)
    return torch.exp(-0.5 * (distance / 0.5) ** 2) * inside


class ChromaExtractor(nn.Module):
    """Chromagram → dominant pitch class per frame, one-hot (paper §2.4).

    Paper: STFT of 2^14 samples with hop 2^12 at 32 kHz. We keep that time resolution at any rate:
    n_fft ≈ 0.512 s and hop ≈ 0.128 s (8192 and 2048 at 16 kHz) → `frame_rate` ≈ 7.8 frames per second.
    With torch.stft(center=True) a clip of N samples gives F = N // hop_length + 1 frames.

    Deviation (documented): frames whose energy is ~silence give an all-zero vector instead of a
    one-hot, so rests, the end of a short melody, and the null melody all look the same to the LM.
    """

    def __init__(self, sample_rate: int, n_fft: int = None, hop_length: int = None, argmax: bool = True):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft or 2 ** round(math.log2(sample_rate * 2 ** 14 / 32000))
        self.hop_length = hop_length or self.n_fft // 4
        self.frame_rate = sample_rate / self.hop_length
        self.argmax = argmax
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("filterbank", chroma_filterbank(sample_rate, self.n_fft), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, C, N) at self.sample_rate → chroma (B, F, 12)."""
        if wav.dim() != 3:
            raise ValueError(f"wav must be (B, C, N), got shape {tuple(wav.shape)}")
        # In float32 whatever the model's dtype: a power spectrum of 16384 points overflows float16.
        mono = wav.float().mean(dim=1)  # (B, C, N) -> (B, N): any channel count
        if mono.shape[-1] < self.n_fft // 2 + 1:  # reflect padding needs N > n_fft / 2
            mono = torch.nn.functional.pad(mono, (0, self.n_fft // 2 + 1 - mono.shape[-1]))
        spec = torch.stft(mono, self.n_fft, self.hop_length, window=self.window.float(), center=True,
                          return_complex=True).abs() ** 2  # (B, N) -> (B, n_bins, F)
        chroma = torch.einsum("cf,bft->btc", self.filterbank.float(), spec)  # (B, n_bins, F) -> (B, F, 12)
        energy = chroma.amax(dim=-1, keepdim=True)  # (B, F, 1)
        # A sine of amplitude A peaks at (A · n_fft / 4)² in a Hann-windowed power spectrum; frames
        # under A ≈ 0.004 (-48 dB) count as silence.
        silent = energy < 1e-6 * self.n_fft ** 2
        chroma = chroma / energy.clamp(min=1e-12)  # max-normalise each frame
        if self.argmax:
            chroma = torch.nn.functional.one_hot(chroma.argmax(dim=-1), 12).float()  # keep the dominant bin
        return chroma.masked_fill(silent, 0.0)

    def extract(self, wav: torch.Tensor, wav_sample_rate: int) -> torch.Tensor:
        """Like forward, for audio at any rate: resampled to self.sample_rate first."""
        if wav_sample_rate != self.sample_rate:
            wav = resample(wav, wav_sample_rate, self.sample_rate)
        return self(wav)


class ConditionDropout:
    """Training-time condition dropout for classifier-free guidance (§3).

    With probability p_cfg a sample gets the null condition (empty description, all-zero chroma), so
    one model learns both p(x | c) and p(x); otherwise, with probability p_melody, its melody alone is
    dropped, so text-only prompts stay in-distribution for a model trained with melodies.
    """

    def __init__(self, p_cfg: float = 0.3, p_melody: float = 0.2):
        self.p_cfg, self.p_melody = p_cfg, p_melody

    def __call__(self, descriptions, chroma: torch.Tensor, generator: torch.Generator):
        B = len(descriptions)
        if chroma.shape[0] != B:
            raise ValueError(f"{B} descriptions but chroma has batch {chroma.shape[0]}")
        draw = torch.rand(B, 2, generator=generator)
        null = draw[:, 0] < self.p_cfg
        drop_melody = null | (draw[:, 1] < self.p_melody)
        descriptions = ["" if n else d for d, n in zip(descriptions, null.tolist())]
        chroma = chroma * (~drop_melody).to(chroma.dtype)[:, None, None].to(chroma.device)
        return descriptions, chroma
