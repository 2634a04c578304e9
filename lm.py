"""The MusicGen language model (paper §2.3): one transformer over interleaved codec tokens.

The paper's central claim is that a *single* autoregressive transformer, reading the K parallel
streams of an audio codec through a codebook interleaving pattern, is enough to generate music: no
cascade of models, no upsampler. This file holds that LM, its config and its checkpoints; musicgen.py
holds the user-facing `MusicGen` front, pretrained.py fills this LM with the published weights.

Data flow (shape letters as in DESIGN.md: B batch, K codebooks, T frames, S pattern steps,
D model width, L text tokens, F chroma frames, P prefix steps, K_in codebooks the LM reads, K_in = K in the paper):

    descriptions ──tokenizer──▶ ids (B, L) ──text encoder (T5 or ours) + projection──▶ text (B, L, D)
    melody wav ──chroma (§2.4)──▶ chroma (B, F, 12) ──projection──▶ melody (B, F, D)
    codes (B, K, T) ──pattern.build──▶ sequence (B, K, S)           special token = codebook_size
    sequence ──Σ_k≤K_in Emb_k──▶ (B, S, D) ──[prefix (B, P, D) ; steps]──▶ (B, P + S, D)
    ──transformer, cross-attending to text (B, L, D)──▶ keep the last S ──K heads──▶
    logits (B, K, S, codebook_size) ──pattern.revert_logits──▶ (B, K, T, codebook_size) ──CE──▶ loss

Where each condition enters the decoder is set by two switches (`LMModel.conditions`, §2.4):

    text_fusion   "cross"    the paper's text model: every layer cross-attends to the L text states
                  "prepend"  the published melody model: the L text states stand before the steps
    melody_fusion "prepend"  the paper: the F chroma frames of the window stand before the steps
                  "sum"      each step's input also gets the chroma frame it predicts (audiocraft's "sum")
                  "none"     no melody input (the published text-to-music models)

A prefix is attended causally like the steps and takes positions 0..P-1; the loss is on the steps
only. Three more switches replace paper behaviour in the tiny recipe (train.TINY_LM says why):
`text_encoder` (the paper's frozen pretrained T5, or conditioners.TextEncoder trained with the LM),
`input_codebooks` (the paper sums all K embeddings; the tiny LM reads codebook 1 and still predicts
all K) and `start_weight` (the paper's loss is a plain mean).

Generation (musicgen.py) runs the same network one pattern step at a time with a KV cache (§3).
"""
import math
import os
from dataclasses import dataclass, asdict
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from conditioners import TextEncoder, Tokenizer, ChromaExtractor
from encodec import read_checkpoint
from patterns import make_pattern
from published.t5 import T5Config, T5Encoder
from transformer import Linear, Transformer, linear

TEXT_ENCODERS = ("t5", "scratch")
TEXT_FUSIONS = ("cross", "prepend")
MELODY_FUSIONS = ("prepend", "sum", "none")


@dataclass
class LMConfig:
    """MusicGen-small (§4.1). Every default is the paper's; train.TINY_LM lists what the tiny recipe changes."""
    # Token streams: copied from the codec (train.lm_config_for), checked equal when both are loaded.
    n_q: int = 4                  # codebooks K
    codebook_size: int = 2048     # entries per codebook
    frame_rate: float = 50.0      # codec frames per second
    sample_rate: int = 32000      # codec sample rate
    # The decoder (§2.3).
    dim: int = 1024               # model width D
    n_layers: int = 24            # decoder blocks
    n_heads: int = 16             # attention heads
    ffn_dim: int = 4096           # feed-forward width, 4·D
    dropout: float = 0.0
    pattern: str = "delay"        # codebook interleaving pattern (§2.2)
    audio_channels: int = 1       # 2: the stereo models, n_q = 2·K streams, left and right per level
    window_seconds: float = 30.0  # training window; longer audio uses sliding windows (§3)
    # How many codebooks' previous tokens the LM reads, summed (§2.3: all K; None = all).
    input_codebooks: int | None = None
    # The text encoder (§2.4): "t5", the paper's frozen pretrained T5-base (768 wide, 12 layers, 12
    # heads; its weights come from a published folder, pretrained.py), or "scratch":
    # conditioners.TextEncoder, a transformer of the size given here, trained with the LM.
    text_encoder: str = "t5"
    text_vocab_size: int = 0      # T5: 32128; scratch: set from the tokenizer built on the descriptions
    text_dim: int = 768
    text_layers: int = 12
    text_heads: int = 12
    # Condition dropout in training (§3): all conditions → null (p_cfg), or the melody alone (p_melody).
    cfg_dropout: float = 0.3
    melody_dropout: float = 0.2
    word_dropout: float = 0.0     # drop words of the description (not in the paper; audiocraft: 0.3 for T5)
    # Where the conditions enter the decoder (§2.4; see the module docstring and LMModel.conditions).
    text_fusion: str = "cross"
    melody_fusion: str = "prepend"
    # The melody's chromagram (§2.4): STFT of 2^14 samples, hop 2^12 (at 32 kHz: 7.8 frames per second).
    chroma_n_fft: int = 16384
    chroma_hop_length: int = 4096
    # A silent frame's chroma: False, one-hot pitch class 0 (the reference's argmax of zeros, which is
    # also its null melody); True, all zeros, so rests and "no melody" differ from a played C.
    chroma_gate_silence: bool = False
    # Loss weight of the first start_frames frames of each window (see compute_loss; 1 = plain mean).
    start_frames: int = 10
    start_weight: float = 1.0
    # Generation defaults stored with the model (§3): classifier-free guidance, and whether a
    # continuation drops the prompt frames the codec encoded with look-ahead into silence.
    cfg_coef: float = 3.0
    trim_prompt_lookahead: bool = False

    @property
    def window_frames(self) -> int:
        return round(self.window_seconds * self.frame_rate)

    @property
    def codebooks_read(self) -> int:
        """K_in: the codebooks whose previous tokens the LM reads (all K unless input_codebooks says fewer)."""
        return self.n_q if self.input_codebooks is None else self.input_codebooks


def t5_config(cfg: LMConfig) -> T5Config:
    """The T5 encoder the LM's text fields describe: T5's own layout (head width d_model / heads, FFN
    4·d_model with ReLU), as in T5-base, the published MusicGen's text encoder (pretrained.py refuses
    any other layout)."""
    return T5Config(vocab_size=cfg.text_vocab_size, d_model=cfg.text_dim, d_kv=cfg.text_dim // cfg.text_heads,
                    d_ff=4 * cfg.text_dim, num_layers=cfg.text_layers, num_heads=cfg.text_heads)


class T5TextEncoder(nn.Module):
    """The paper's text conditioning (§2.4): a frozen pretrained T5 encoder, then one linear layer
    (with a bias, as the reference's) to the LM width, padded positions zeroed. Same interface as
    conditioners.TextEncoder, so the LM does not care which one it holds."""

    def __init__(self, cfg: T5Config, out_dim: int):
        super().__init__()
        self.t5 = T5Encoder(cfg).requires_grad_(False)  # frozen: trained on text alone, never with the LM
        self.projection = nn.Linear(cfg.d_model, out_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        """ids, mask (B, L) → condition (B, L, out_dim) with padded positions zeroed, and mask (B, L)."""
        x = self.projection(self.t5(ids, mask))  # (B, L) -> (B, L, d_model) -> (B, L, out_dim)
        return x * mask[..., None], mask


def check_input_codebooks(cfg: LMConfig):
    """ValueError unless the LM can read what its pattern needs. An LM reading K_in < K codebooks
    suits patterns where every step holds a token of the codebooks it reads (parallel, delay: all
    but the last K-1 steps). Flatten, partial-flatten and vall-e put the finer codebooks on steps of
    their own, which such an LM would never read: the count of those steps grows with T."""
    K_in = cfg.codebooks_read
    if not 1 <= K_in <= cfg.n_q:
        raise ValueError(f"input_codebooks must be 1..{cfg.n_q} or None, got {cfg.input_codebooks}")
    pattern = make_pattern(cfg.pattern, cfg.n_q, cfg.audio_channels)

    def hidden_steps(n_frames):  # steps holding real tokens, none of them in the codebooks read
        layout = pattern.build(torch.zeros(1, cfg.n_q, n_frames, dtype=torch.long), -1)[0][0]  # (K, S)
        real = layout >= 0
        return int((real.any(dim=0) & ~real[:K_in].any(dim=0)).sum())
    if K_in < cfg.n_q and hidden_steps(16) > hidden_steps(8):
        raise ValueError(f"pattern {cfg.pattern!r} puts codebooks {K_in + 1}..{cfg.n_q} on steps of their own, "
                         f"which an LM reading {K_in} codebook(s) never reads: set input_codebooks to all")


class Conditions(NamedTuple):
    """The conditions, placed where LMConfig's fusions put them (LMModel.conditions builds it)."""
    prefix: torch.Tensor | None      # (B, P, D) stands before the first step: chroma frames and/or text
    cross: torch.Tensor | None       # (B, L, D) cross-attended by every layer: the text
    cross_mask: torch.Tensor | None  # (B, L) bool, True = a real token; an all-False row = the null text
    steps: torch.Tensor | None       # (B, S, D) added to the steps' inputs: the "sum" melody


def chroma_extractor(cfg: LMConfig) -> ChromaExtractor:
    """The melody's chroma extractor of an LM of `cfg` (LMModel.chroma; the LM stage's data loader
    builds the same one, data.CodeWindows)."""
    return ChromaExtractor(cfg.sample_rate, cfg.chroma_n_fft, cfg.chroma_hop_length, gate_silence=cfg.chroma_gate_silence)


class LMModel(nn.Module):
    """The language model of §2.3: codebook embeddings summed, a causal transformer, K linear heads.
    (audiocraft's name for it; MusicLM is Google's model, which the paper compares against in Table 1.)"""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        assert cfg.text_vocab_size > 0, "LMConfig.text_vocab_size must be set (T5: its config; scratch: the tokenizer)"
        self.cfg = cfg
        self.pattern = make_pattern(cfg.pattern, cfg.n_q, cfg.audio_channels)
        self.special = cfg.codebook_size  # the empty token of the pattern; embeddings get one extra row
        # One embedding table per codebook read, of card + 1 rows (the extra one: the pattern's empty
        # token); at each step their K_in vectors are *summed* into one (§2.3).
        check_input_codebooks(cfg)
        self.embeddings = nn.ModuleList(nn.Embedding(cfg.codebook_size + 1, cfg.dim)
                                        for _ in range(cfg.codebooks_read))
        # The text encoder (§2.4), ending in a projection to D: the paper's frozen T5, or ours trained with the LM.
        if cfg.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}, got {cfg.text_encoder!r}")
        if cfg.text_encoder == "t5":
            self.text_encoder = T5TextEncoder(t5_config(cfg), out_dim=cfg.dim)
        else:
            self.text_encoder = TextEncoder(cfg.text_vocab_size, cfg.text_dim, cfg.text_layers, cfg.text_heads,
                                            out_dim=cfg.dim)
        # Melody (§2.4): the window's chromagram, one-hot per frame (12), projected to D. Prepended,
        # the projection has a bias, as the reference's; summed onto the steps it has none, so an
        # all-zero chroma (a gated rest) adds nothing. The null melody of guidance and of condition
        # dropout is the chroma of silence, as in the reference, which drops a melody by zeroing its wav.
        for name, value, allowed in (("text_fusion", cfg.text_fusion, TEXT_FUSIONS),
                                     ("melody_fusion", cfg.melody_fusion, MELODY_FUSIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.chroma = chroma_extractor(cfg)
        window = torch.zeros(1, 1, round(cfg.window_seconds * cfg.sample_rate))
        self.register_buffer("null_chroma", self.chroma(window), persistent=False)  # (1, F, 12)
        self.melody_frames = self.null_chroma.shape[1]  # F: the chroma frames of one window
        self.melody_projection = (None if cfg.melody_fusion == "none" else
                                  nn.Linear(12, cfg.dim, bias=cfg.melody_fusion == "prepend"))
        self.transformer = Transformer(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.ffn_dim,
                                       cross_attention=cfg.text_fusion == "cross", causal=True, dropout=cfg.dropout)
        # One linear head per codebook, predicting its codebook_size real entries (never the special token).
        self.heads = nn.ModuleList(Linear(cfg.dim, cfg.codebook_size, bias=False) for _ in range(cfg.n_q))
        self._stacked_heads = self._stacked_from = None  # decoding's one-matrix form of the heads (apply_heads)

    # ---- conditions --------------------------------------------------------------------------------
    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):
        """ids, mask (B, L) → condition (B, L, D) and its mask (B, L). An all-False row is the null text."""
        return self.text_encoder(ids, mask)

    def step_frames(self, n_steps: int) -> torch.Tensor:
        """(S,) for each pattern step s, the frame of the tokens the output at s predicts: those of step
        s+1, lowest codebook first (delay: frame s; vall-e's second half: frames 0..T-1 again). Read off
        the pattern itself, so it holds for all six patterns; steps with no real token keep the last frame."""
        T = self.pattern.num_frames(n_steps)
        frames = torch.arange(T).expand(1, self.cfg.n_q, T)                   # (1, K, T): t at (k, t)
        layout = self.pattern.build(frames, -1)[0][0]                         # (K, S), -1 where empty
        first_real = (layout >= 0).int().argmax(dim=0)                       # (S,) lowest k with a token
        frame = layout.gather(0, first_real[None])[0]                         # (S,), -1 if the step is empty
        steps = torch.arange(n_steps)
        last_real = torch.cummax(torch.where(frame >= 0, steps, 0), dim=0).values
        frame = frame[last_real]                                              # forward-fill empty steps
        return torch.cat([frame[1:], frame[-1:]]).clamp(min=0)               # step s predicts step s+1

    def melody_steps(self, chroma: torch.Tensor, n_steps: int) -> torch.Tensor:
        """The "sum" fusion: chroma (B, F, 12) → (B, S, D), for each step the projected chroma frame
        at the time of the frame that step predicts."""
        B, n_frames, n_bins = chroma.shape
        if n_frames != self.melody_frames or n_bins != 12:
            raise ValueError(f"chroma must be (B, {self.melody_frames}, 12), got {tuple(chroma.shape)}")
        # Frame t lies at t / frame_rate seconds, i.e. at chroma frame t · chroma_rate / frame_rate.
        seconds = self.step_frames(n_steps).to(chroma.device) / self.cfg.frame_rate
        index = (seconds * self.chroma.frame_rate).round().long().clamp(max=n_frames - 1)  # (S,)
        steps = chroma[:, index].to(self.melody_projection.weight.dtype)  # (B, F, 12) -> (B, S, 12)
        return self.melody_projection(steps)  # (B, S, 12) -> (B, S, D)

    def fit_chroma(self, chroma: torch.Tensor) -> torch.Tensor:
        """chroma (B, F', 12) → (B, F, 12), F the frames of one window: a shorter chroma is repeated
        until it fills the window (the reference's fill), a longer one is cut."""
        if chroma.dim() != 3 or chroma.shape[1] < 1 or chroma.shape[2] != 12:
            raise ValueError(f"chroma must be (B, frames >= 1, 12), got {tuple(chroma.shape)}")
        repeats = math.ceil(self.melody_frames / chroma.shape[1])
        return chroma.repeat(1, repeats, 1)[:, :self.melody_frames]  # (B, F', 12) -> (B, F, 12)

    def conditions(self, text, text_mask, chroma=None, n_steps=None) -> "Conditions":
        """Put each condition where the fusions say (§2.4).

        Args:
            text: (B, L, D) from encode_text, padded positions zero; text_mask: (B, L) bool.
            chroma: (B, F', 12) one-hot chroma of the melody (fit to F frames), or None = the null melody.
            n_steps: S, the steps of the whole sequence (needed by the "sum" fusion only).
        Returns:
            Conditions: the prefix (B, P, D), the cross-attended text (B, L, D) and its mask, the
            per-step melody (B, S, D); each None where the fusions put nothing.
        """
        B = text.shape[0]
        prefix, cross, cross_mask, steps = [], None, None, None
        if self.melody_projection is not None:
            chroma = self.null_chroma.expand(B, -1, -1) if chroma is None else self.fit_chroma(chroma)
            if self.cfg.melody_fusion == "prepend":
                dtype = self.melody_projection.weight.dtype
                prefix.append(self.melody_projection(chroma.to(dtype)))  # (B, F, 12) -> (B, F, D)
            else:
                steps = self.melody_steps(chroma, n_steps)  # (B, F, 12) -> (B, S, D)
        if self.cfg.text_fusion == "prepend":
            # Padded positions are zero vectors and are attended, exactly as in the reference.
            prefix.append(text)  # after the melody: [chroma frames ; text tokens]
        else:
            cross, cross_mask = text, text_mask
        prefix = torch.cat(prefix, dim=1) if prefix else None  # (B, P, D), P = F and/or L
        return Conditions(prefix, cross, cross_mask, steps)

    # ---- the network -------------------------------------------------------------------------------
    def forward(self, sequence, conditions: "Conditions", cache=None):
        """One pass of the decoder.

        Args:
            sequence: (B, K, S) int64 tokens in [0, codebook_size] (codebook_size = special).
            conditions: from `conditions()`. The prefix goes in front of a full pass, or of the first
                call with an empty cache, which then holds it; later calls feed new steps only.
            cache: KVCache for step-by-step decoding; positions continue from what it holds.
        Returns:
            logits (B, K, S, codebook_size) of the S steps given (none for the prefix).
        """
        B, K, S = sequence.shape
        assert K == self.cfg.n_q, f"sequence has {K} codebooks, the LM expects {self.cfg.n_q}"
        x = self.embed(sequence)  # (B, K, S) -> (B, S, D)
        prefix = conditions.prefix
        P = 0 if prefix is None else prefix.shape[1]
        fresh = cache is None or cache.length == 0  # nothing fed yet: the prefix goes in front
        first = 0 if fresh else cache.length - P    # index of sequence[..., 0] among the steps
        if conditions.steps is not None:  # "sum": each step also reads the melody of the frame it predicts
            x = x + conditions.steps[:, first:first + S]  # (B, S, D)
        if fresh and prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # (B, S, D) -> (B, P + S, D)
        x = self.transformer(x, condition=conditions.cross, condition_mask=conditions.cross_mask, cache=cache)
        return self.apply_heads(x[:, -S:])  # (B, S, D) -> (B, K, S, card): the prefix predicts nothing

    def embed(self, sequence):
        """§2.3: the K streams of a step become one vector, x_s = Σ_k Emb_k(sequence[:, k, s]), summed over
        the codebooks read (the paper: all K; `embeddings` holds one table per codebook read, each of
        codebook_size + 1 rows: the special token is the last). sequence (B, K, S) -> x (B, S, D)."""
        low, high = torch.aminmax(sequence)
        if low < 0 or high > self.special:
            raise ValueError(f"tokens must be in [0, {self.special}], got [{int(low)}, {int(high)}]")
        return sum(table(sequence[:, k]) for k, table in enumerate(self.embeddings))  # K_in × (B, S, D) -> (B, S, D)

    def apply_heads(self, h):
        """The K linear heads on the hidden states h (B, S, D) -> logits (B, K, S, card), logits_k = h·W_kᵀ.

        Training runs the K products as written. Decoding computes the same K products as one, h times
        the heads' weights stacked into a (K·card, D) matrix (head k in rows k·card..(k+1)·card): one
        call a step instead of K, and a decoding step of the tiny LM is mostly per-call cost. The stacked
        matrix is built once and rebuilt only when a head's weight changes (tests/test_fast_paths.py:
        both forms give the same logits)."""
        B, S, _ = h.shape
        if torch.is_grad_enabled():
            return torch.stack([head(h) for head in self.heads], dim=1)  # K × (B, S, card) -> (B, K, S, card)
        weights = [head.weight for head in self.heads]
        # What the stacked matrix was built from: the very parameters, their version (an in-place update
        # bumps it) and their storage (`.to(dtype)` swaps a parameter's data, not the parameter).
        source = [(w, w._version, w.data_ptr(), w.dtype, w.device) for w in weights]
        if self._stacked_from is None or any(a[0] is not b[0] or a[1:] != b[1:]
                                             for a, b in zip(source, self._stacked_from)):
            self._stacked_heads, self._stacked_from = torch.cat(weights), source  # K × (card, D) -> (K·card, D)
        logits = linear(h, self._stacked_heads)  # (B, S, D) -> (B, S, K·card)
        return logits.view(B, S, len(weights), -1).transpose(1, 2)  # -> (B, S, K, card) -> (B, K, S, card)

    def compute_loss(self, codes, text, text_mask, chroma):
        """Cross-entropy of §2.3, averaged over codebooks, on the real (non-special) positions only.

        Args:
            codes: (B, K, T) int64; text (B, L, D), text_mask (B, L); chroma (B, F, 12) or None.
        Returns:
            loss (scalar, the training objective, frame-weighted) and the plain per-codebook
            cross-entropies (K,) for logging and held-out evaluation.
        """
        B, K, T = codes.shape
        sequence, _ = self.pattern.build(codes, self.special)  # (B, K, T) -> (B, K, S)
        logits = self(sequence, self.conditions(text, text_mask, chroma, sequence.shape[-1]))  # (B, K, S, card)
        # Output step s predicts the tokens of step s+1; revert_logits applies that shift and tells which
        # (k, t) have a prediction at all. The mask comes from the pattern alone (never re-applied).
        logits, valid = self.pattern.revert_logits(logits)  # (B, K, S, card) -> (B, K, T, card), (K, T)
        # The paper's loss is the plain mean (start_weight = 1). The tiny recipe weighs the first
        # start_frames frames more: there the LM has no audio to go on and must choose from the
        # conditions alone, while later frames are mostly predictable from the audio before them, so
        # in a plain mean the description is worth a few tokens in 800 (NOTES.md, "Start-frame loss weight").
        frame_weight = torch.ones(T, device=codes.device)
        frame_weight[:self.cfg.start_frames] = self.cfg.start_weight
        objective, per_codebook = [], []
        for k in range(K):
            ce = F.cross_entropy(logits[:, k][:, valid[k]].reshape(-1, logits.shape[-1]),
                                 codes[:, k][:, valid[k]].reshape(-1), reduction="none")  # (B · T_k,), b-major
            weight = frame_weight[valid[k]].repeat(B)                                    # (T_k,) -> (B · T_k,)
            objective.append((ce * weight).sum() / weight.sum())
            per_codebook.append(ce.mean().detach())  # the plain cross-entropy, for logging and evaluation
        return torch.stack(objective).mean(), torch.stack(per_codebook)


# ---- checkpoints: one self-describing dict ---------------------------------------------------------
def save_lm(path, lm: LMModel, tokenizer: Tokenizer, step=0, optimizer=None, extra=None):
    """Atomic write (temp file + rename), so an interrupted save never destroys the last checkpoint.
    The word tokenizer's vocabulary is stored with the weights; a T5 LM is read from its published folder
    instead (pretrained.load_pretrained)."""
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError("save_lm stores a word vocabulary (conditioners.Tokenizer); a T5 LM is loaded with "
                         "MusicGen.from_pretrained(folder)")
    ckpt = dict(config=asdict(lm.cfg), model=lm.state_dict(), vocab=list(tokenizer.vocab), step=step,
                optimizer=optimizer.state_dict() if optimizer is not None else None, **(extra or {}))
    tmp = f"{path}.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def unstacked(state: dict, cfg: LMConfig) -> dict:
    """A state dict written before the K tables and heads were modules of their own (one stacked
    `embeddings.weight` of K_in·(card + 1) rows, one `heads.weight` of K·card rows), in today's names."""
    state = dict(state)
    for name, n, rows in (("embeddings", cfg.codebooks_read, cfg.codebook_size + 1), ("heads", cfg.n_q, cfg.codebook_size)):
        stacked = state.pop(f"{name}.weight", None)
        if stacked is not None and stacked.shape[0] == n * rows:
            state.update({f"{name}.{k}.weight": part for k, part in enumerate(stacked.split(rows))})
    return state


def load_lm(path):
    """→ (lm, tokenizer, checkpoint dict). `weights_only=True`: a checkpoint can never run code."""
    ckpt = read_checkpoint(path, "LM")
    return (*lm_from_checkpoint(ckpt, path), ckpt)


def lm_from_checkpoint(ckpt: dict, path):
    """A checkpoint dict read from `path` (a run trained from scratch) → (lm, tokenizer)."""
    try:
        lm = LMModel(LMConfig(**ckpt["config"]))
        lm.load_state_dict(unstacked(ckpt["model"], lm.cfg))
        tokenizer = Tokenizer(ckpt["vocab"])
    except Exception as error:  # e.g. written by an older lm.py with other parameter names
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: this LM checkpoint does not fit lm.py ({type(error).__name__}: "
                         f"{first_line}); retrain with `python train.py --stage lm`") from None
    return lm, tokenizer
