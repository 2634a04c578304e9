"""MusicGen: one language model over interleaved codec tokens (paper §2), and its sampler (§3).

The paper's central claim is that a *single* autoregressive transformer, reading the K parallel
streams of an audio codec through a codebook interleaving pattern, is enough to generate music: no
cascade of models, no upsampler. This file holds that one LM and the user-facing `MusicGen` front.

Data flow (shape letters as in DESIGN.md: B batch, K codebooks, T frames, S pattern steps,
D model width, L text tokens, F chroma frames, K_in codebooks the LM reads):

    codes (B, K, T) ──pattern.build──▶ sequence (B, K, S)           special token = codebook_size
    sequence ──Σ_k≤K_in Emb_k──▶ (B, S, D) ──+ chroma of each step's frame (B, S, D)──▶ (B, S, D)
    ──transformer, cross-attending to text (B, L, D)──▶ (B, S, D) ──K heads──▶
    logits (B, K, S, codebook_size) ──pattern.revert_logits──▶ (B, K, T, codebook_size) ──CE──▶ loss

Deviation (ours): the tiny LM reads codebook 1's tokens only (LMConfig.input_codebooks; the paper
sums all K embeddings), while still predicting all K: the near-random finer codebooks drowned the
note timing in our tiny model (README, "Keeping a beat").

Deviation (ours): the paper prepends the chroma to the sequence (§2.4); we add it to the input of
the step it belongs to (the "sum" fusion of the reference library's condition fuser). See MusicLM.

Generation runs the same network one pattern step at a time with a KV cache (§3); classifier-free
guidance runs the conditional and the null condition as one batch of 2B.
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from conditioners import TextEncoder, Tokenizer, ChromaExtractor
from patterns import make_pattern
from transformer import Transformer, KVCache

# Classifier-free guidance of generation (§3; paper: 3). Ours is 2: the tiny LM's text adherence at
# cfg 1 / 2 / 3 was 0.85 / 0.88 / 0.84 on 48 training descriptions, and on the held-out ones 0.84-0.85
# at 2 vs 0.78-0.80 at 3 over three trainings (melody dropout 0.2; with 0.1: 0.82-0.84 vs 0.76-0.77):
# stronger guidance pushes the tiny LM off its data (Fréchet 73 vs 92), costing instrument and register
# (README, "Results"). With the codec's instantaneous-frequency loss the gap narrowed (0.78-0.82 at 2,
# 0.75-0.80 at 3 over two trainings and three evaluation seeds).
DEFAULT_CFG_COEF = 2.0


@dataclass
class LMConfig:
    # Token streams: copied from the codec, asserted equal when both are loaded.
    n_q: int = 4                  # codebooks K (paper: 4, from the 32 kHz EnCodec)
    codebook_size: int = 256      # entries per codebook (paper: 2048)
    frame_rate: float = 50.0      # codec frames per second (paper: 50)
    sample_rate: int = 16000      # codec sample rate (paper: 32000)
    # The decoder (§2.3).
    dim: int = 256                # model width D (paper, small: 1024)
    n_layers: int = 4             # decoder blocks (paper, small: 24)
    n_heads: int = 4              # attention heads (paper, small: 16)
    ffn_dim: int = 1024           # feed-forward width (paper, small: 4096 = 4·D)
    dropout: float = 0.0          # (paper: 0)
    pattern: str = "delay"        # interleaving pattern (paper's default: delay, §2.2)
    window_seconds: float = 4.0   # training window; longer audio uses sliding windows (paper: 30 s)
    # The text encoder (§2.4). Paper: frozen T5-base; ours is tiny and trained jointly (see README).
    text_vocab_size: int = 0      # set from the tokenizer built on the training descriptions
    text_dim: int = 128           # (paper: T5-base, 768, projected to D)
    text_layers: int = 2          # (paper: 12)
    text_heads: int = 4           # (paper: 12)
    # Condition dropout during training (§2.4, §3).
    # All conditions → null, so the same model is also unconditional (paper: 0.3 text, 0.2 melody).
    # 0.1 here: with 0.3 the tiny LM did not learn to keep the tempo word's beat (tempo adherence at
    # cfg 1: 0.46 with 0.3, 0.54 with 0.1, 0.69 with none; 0.83 with 0.1 at cfg 3; README, "Keeping a
    # beat").
    cfg_dropout: float = 0.1
    # Melody alone → null, so text-only prompts stay in-distribution (paper: 0.2; audiocraft: 0.5). 0.2
    # gave chroma cosine 0.33 vs 0.28 with 0.5 in an early LM; with the LM reading codebook 1, 0.1 gave
    # melody 0.50-0.52 vs 0.44-0.47 (2.3-2.8× the text-only value vs 1.7-1.9×), adherence 0.81-0.84; with
    # the current codec 0.61-0.63 vs 0.55-0.58 (2.5-2.7× vs 1.9-2.1×), adherence 0.78-0.82 vs 0.80-0.81 (README).
    melody_dropout: float = 0.1
    word_dropout: float = 0.0     # text augmentation (audiocraft: 0.3 on T5 descriptions; 0.1 cost us tempo, README)
    # Loss weight of the first frames of each window, which only the conditions can predict (paper: 1;
    # see compute_loss). With weight 1 our LM ignored the mode words; 10 frames × 20 (half of a 4 s
    # window's loss on its first 0.2 s) taught them but starved the rest of the window and the tempo
    # (0.33 vs 0.71 with weight 1); × 5 keeps most of both (README).
    start_frames: int = 10
    start_weight: float = 5.0
    # Deviation (ours): how many codebooks' previous tokens the LM reads (paper: all K, summed, §2.3).
    # With 1 it still *predicts* all K, but its input is codebook 1's history alone: the finer codebooks
    # are near-random (2.3-4.5 nats each) and, summed into every input, they drowned the note timing,
    # so the tiny LM never kept a beat (tempo adherence 0.31 reading all 4, 0.77 reading 1; with the
    # current codec 0.28 reading 2 and 0.78 reading 1, means of three evaluations; README, "Keeping a beat").
    input_codebooks: int = 1

    @property
    def window_frames(self) -> int:
        return round(self.window_seconds * self.frame_rate)


def paper_config() -> LMConfig:
    """MusicGen-small at full size (§4.1): 300M parameters in the decoder. Built in tests, never trained here."""
    return LMConfig(n_q=4, codebook_size=2048, frame_rate=50.0, sample_rate=32000, dim=1024, n_layers=24,
                    n_heads=16, ffn_dim=4096, window_seconds=30.0, text_vocab_size=32128, text_dim=768,
                    text_layers=12, text_heads=12, cfg_dropout=0.3, start_weight=1.0,
                    input_codebooks=4)  # the paper's condition dropout, plain mean loss, all K codebooks read


class MusicLM(nn.Module):
    """The language model of §2.3: codebook embeddings summed, a causal transformer, K linear heads."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        assert cfg.text_vocab_size > 0, "LMConfig.text_vocab_size must be set from the tokenizer"
        self.cfg = cfg
        self.pattern = make_pattern(cfg.pattern, cfg.n_q)
        self.special = cfg.codebook_size  # the empty token of the pattern; embeddings get one extra row
        # One table per codebook read; at each step their embeddings are *summed* into one vector (§2.3).
        # The paper reads all K; we read the first cfg.input_codebooks (1 in the tiny preset, see LMConfig).
        # The tables of (card + 1) rows are stacked into one: codebook k's rows start at k·(card + 1), so
        # one lookup of the offset tokens fetches all of them (one call per step instead of K, 5x faster).
        assert 1 <= cfg.input_codebooks <= cfg.n_q, f"input_codebooks must be 1..{cfg.n_q}, got {cfg.input_codebooks}"
        self.embeddings = nn.Embedding(cfg.input_codebooks * (cfg.codebook_size + 1), cfg.dim)
        self.register_buffer("embedding_offsets", torch.arange(cfg.input_codebooks)[:, None] * (cfg.codebook_size + 1),
                             persistent=False)  # (K_in, 1)
        self.text_encoder = TextEncoder(cfg.text_vocab_size, cfg.text_dim, cfg.text_layers, cfg.text_heads,
                                        out_dim=cfg.dim)
        # Melody: one-hot chroma (12) projected to D (§2.4). No bias, so the null melody (all-zero chroma)
        # adds nothing. Deviation: the paper *prepends* the F chroma frames (7.8 per second) to the
        # sequence, and attention must learn which frame belongs to which step; our 1000-step LM never
        # did (chroma cosine 0.19 with the melody vs 0.22 without, README). We resample the chroma to
        # the steps instead and *add* it to each step's input, so the step that predicts frame t reads
        # the melody at frame t directly. Same information, same bottleneck (argmax one-hot).
        self.chroma = ChromaExtractor(cfg.sample_rate)
        self.melody_projection = nn.Linear(12, cfg.dim, bias=False)
        self.transformer = Transformer(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.ffn_dim, cross_attention=True,
                                       causal=True, dropout=cfg.dropout)
        # One linear head per codebook, predicting its codebook_size real entries (never the special
        # token). The K heads are stored as one (K·card, D) matrix, head k being rows k·card..(k+1)·card:
        # one matmul per step instead of K (decoding a step on a CPU is mostly per-call overhead).
        self.heads = nn.Linear(cfg.dim, cfg.n_q * cfg.codebook_size, bias=False)
        # Window length in chroma frames F: the chroma of a window is always F frames (zeros = no melody).
        self.melody_frames = self.chroma(torch.zeros(1, 1, round(cfg.window_seconds * cfg.sample_rate))).shape[1]

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
        """chroma (B, F, 12) one-hot (or all-zero = null melody) → (B, S, D), one vector per step."""
        B, n_frames, n_bins = chroma.shape
        if n_frames != self.melody_frames or n_bins != 12:
            raise ValueError(f"chroma must be (B, {self.melody_frames}, 12), got {tuple(chroma.shape)}")
        # Frame t lies at t / frame_rate seconds, i.e. at chroma frame t · chroma_rate / frame_rate.
        seconds = self.step_frames(n_steps).to(chroma.device) / self.cfg.frame_rate
        index = (seconds * self.chroma.frame_rate).round().long().clamp(max=n_frames - 1)  # (S,)
        return self.melody_projection(chroma[:, index])  # (B, F, 12) -> (B, S, 12) -> (B, S, D)

    # ---- the network -------------------------------------------------------------------------------
    def forward(self, sequence, text, text_mask, melody=None, cache=None):
        """One pass of the decoder.

        Args:
            sequence: (B, K, S) int64 tokens in [0, codebook_size] (codebook_size = special).
            text: (B, L, D) encoded description; text_mask: (B, L) bool, True = real token.
            melody: (B, S, D) from melody_steps for these S steps, or None (= null melody).
            cache: KVCache for step-by-step decoding; positions continue from what it holds.
        Returns:
            logits (B, K, S, codebook_size).
        """
        B, K, S = sequence.shape
        assert K == self.cfg.n_q, f"sequence has {K} codebooks, the LM expects {self.cfg.n_q}"
        # Σ_k Emb_k(x_k) over the codebooks read: the streams of one step become one vector (B, S, D).
        low, high = torch.aminmax(sequence)  # with stacked tables a bad token would silently read the next table
        if low < 0 or high > self.special:
            raise ValueError(f"tokens must be in [0, {self.special}], got [{int(low)}, {int(high)}]")
        read = sequence[:, :self.cfg.input_codebooks]  # (B, K, S) -> (B, K_in, S); the paper: K_in = K
        x = self.embeddings(read + self.embedding_offsets).sum(dim=1)  # (B, K_in, S) -> (B, K_in, S, D) -> (B, S, D)
        if melody is not None:
            assert melody.shape == x.shape, f"melody {tuple(melody.shape)} must match the steps {tuple(x.shape)}"
            x = x + melody  # (B, S, D): each step also reads the melody of the frame it predicts
        x = self.transformer(x, condition=text, condition_mask=text_mask, cache=cache)
        logits = self.heads(x)  # (B, S, D) -> (B, S, K · codebook_size)
        return logits.view(B, S, K, -1).transpose(1, 2)  # -> (B, S, K, card) -> (B, K, S, card)

    def compute_loss(self, codes, text, text_mask, chroma):
        """Cross-entropy of §2.3, averaged over codebooks, on the real (non-special) positions only.

        Args:
            codes: (B, K, T) int64; text (B, L, D), text_mask (B, L); chroma (B, F, 12).
        Returns:
            loss (scalar, the training objective, frame-weighted) and the plain per-codebook
            cross-entropies (K,) for logging and held-out evaluation.
        """
        B, K, T = codes.shape
        sequence, _ = self.pattern.build(codes, self.special)  # (B, K, T) -> (B, K, S)
        logits = self(sequence, text, text_mask, melody=self.melody_steps(chroma, sequence.shape[-1]))  # (B, K, S, card)
        # Output step s predicts the tokens of step s+1; revert_logits applies that shift and tells which
        # (k, t) have a prediction at all. The mask comes from the pattern alone (never re-applied).
        logits, valid = self.pattern.revert_logits(logits)  # (B, K, S, card) -> (B, K, T, card), (K, T)
        # Deviation (ours, README "Design notes"): the first start_frames frames of the window weigh
        # start_weight times more. There the LM has no audio to go on and must choose from the
        # conditions alone; later frames are mostly predictable from the audio before them, so in a
        # plain average the description is worth a few tokens in 800 and our 1000-step LM never
        # learned the mode words. start_weight = 1 is the paper's plain mean.
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


# ---- sampling (§3) ---------------------------------------------------------------------------------
def sample_next_tokens(logits, use_sampling=True, temperature=1.0, top_k=250, top_p=0.0, generator=None):
    """Pick one token per codebook from logits (B, K, card) → (B, K).

    The random draw has the same shape at every step whatever the logits are, so a seeded generator
    gives identical codes for any duration and with or without the KV cache.
    """
    B, K, card = logits.shape
    if not use_sampling or temperature <= 0:
        return logits.argmax(dim=-1)  # greedy decoding
    # Temperature: divide the logits, flattening (T > 1) or sharpening (T < 1) the distribution.
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p > 0:
        # Top-p (nucleus): keep the smallest set of tokens whose probability sums to p.
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # mass *before* a token already exceeds p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    elif top_k > 0:
        # Top-k: keep the k most likely tokens (k capped at codebook_size).
        # The k-th largest is the (card - k + 1)-th smallest; kthvalue finds it ~2x faster than topk(k).
        kth = probs.kthvalue(card - min(top_k, card) + 1, dim=-1, keepdim=True).values  # (B, K, 1)
        probs = probs.masked_fill(probs < kth, 0.0)
    probs = probs / probs.sum(-1, keepdim=True)
    # Sample: inverse-CDF with one uniform number per (b, k).
    uniform = torch.rand(B, K, 1, generator=generator, device=logits.device)
    tokens = torch.searchsorted(probs.cumsum(-1), uniform).squeeze(-1)  # (B, K, 1) -> (B, K)
    return tokens.clamp_(max=card - 1)  # guards the float-rounding case cumsum[-1] < uniform


@torch.inference_mode()  # like no_grad, minus autograd's version bookkeeping: ~14% faster cached steps here
def generate_codes(lm: MusicLM, text, text_mask, chroma, n_frames, prompt=None, cfg_coef=3.0,
                   use_sampling=True, temperature=1.0, top_k=250, top_p=0.0, generator=None, use_cache=True):
    """Autoregressive decoding over the pattern's steps, within one window (§3).

    Args:
        text (B, L, D), text_mask (B, L): encoded descriptions; chroma (B, F, 12) (zeros = no melody).
        n_frames: T, frames to return (prompt included), at most the training window.
        prompt: (B, K, Tp) codes kept verbatim at the start, or None.
        cfg_coef: classifier-free guidance; None runs the conditional model alone.
    Returns:
        codes (B, K, T).
    """
    B = text.shape[0]
    K, unknown = lm.cfg.n_q, -1
    codes = torch.full((B, K, n_frames), unknown, dtype=torch.long, device=text.device)
    if prompt is not None:
        assert prompt.shape[:2] == (B, K) and prompt.shape[2] <= n_frames, f"bad prompt shape {tuple(prompt.shape)}"
        codes[..., :prompt.shape[2]] = prompt
    # The pattern places every (k, t) at its step; still-unknown tokens are -1, special ones stay special.
    sequence, _ = lm.pattern.build(codes, lm.special)  # (B, K, T) -> (B, K, S)
    S = sequence.shape[-1]
    melody = lm.melody_steps(chroma, S)  # (B, S, D)
    if cfg_coef is not None:
        # CFG as one batch of 2B: first half conditional, second half the null condition
        # (no text: an all-masked cross-attention; no melody: all-zero melody vectors).
        text = torch.cat([text, torch.zeros_like(text)])
        text_mask = torch.cat([text_mask, torch.zeros_like(text_mask)])
        melody = torch.cat([melody, torch.zeros_like(melody)])
    # Steps before the first unknown token are known (start step + prompt): they are fed in one pass.
    unknown_steps = (sequence == unknown).any(dim=(0, 1)).nonzero()
    first = int(unknown_steps[0]) if len(unknown_steps) else S
    cache = KVCache() if use_cache else None
    fed = 0  # steps already inside the cache
    for s in range(first, S):  # predict step s from steps < s
        begin = fed if use_cache else 0  # with the cache only the new steps are fed
        step_input = sequence[..., begin:s]
        if cfg_coef is not None:
            step_input = torch.cat([step_input, step_input])
        logits = lm(step_input, text, text_mask, melody=melody[:, begin:s], cache=cache)[:, :, -1]  # (B', K, card)
        fed = s
        if cfg_coef is not None:
            # CFG mix (§3): l = l_null + γ·(l_cond − l_null); γ = 1 is the conditional model alone.
            cond, null = logits.chunk(2)
            logits = null + cfg_coef * (cond - null)
        tokens = sample_next_tokens(logits, use_sampling, temperature, top_k, top_p, generator)  # (B, K)
        # Write only where the pattern has a real token still unknown: the prompt is never overwritten.
        write = sequence[..., s] == unknown
        sequence[..., s] = torch.where(write, tokens, sequence[..., s])
    return lm.pattern.revert(sequence)  # (B, K, S) -> (B, K, T)


# ---- the user-facing front (mirrors the reference library's API on purpose) -----------------------
class MusicGen:
    """Codec + LM + tokenizer, rebuilt from a run directory, with the reference library's methods.

    Every `generate*` method returns audio (B, 1, N) at `self.sample_rate`. Seeding is through torch's
    global RNG, as in the reference: `torch.manual_seed(0)` before a call makes it reproducible.
    """

    def __init__(self, codec, lm: MusicLM, tokenizer: Tokenizer):
        assert lm.cfg.n_q == codec.n_q and lm.cfg.codebook_size == codec.codebook_size, \
            "the LM and the codec disagree on n_q / codebook_size"
        assert lm.cfg.sample_rate == codec.sample_rate and abs(lm.cfg.frame_rate - codec.frame_rate) < 1e-9, \
            "the LM and the codec disagree on sample_rate / frame_rate"
        self.codec, self.lm, self.tokenizer = codec.eval(), lm.eval(), tokenizer
        self.sample_rate, self.frame_rate = codec.sample_rate, codec.frame_rate
        self.device = next(lm.parameters()).device
        self.set_generation_params()

    @classmethod
    def load(cls, run_dir, device="cpu"):
        """Rebuild everything from `run_dir/codec.pt` and `run_dir/lm.pt` (weights_only loads)."""
        from pathlib import Path
        from encodec import EncodecModel
        codec, _ = EncodecModel.load(Path(run_dir) / "codec.pt")
        lm, tokenizer, _ = load_lm(Path(run_dir) / "lm.pt")
        return cls(codec.to(device), lm.to(device), tokenizer)

    def set_generation_params(self, duration=None, use_sampling=True, top_k=250, top_p=0.0, temperature=1.0,
                              cfg_coef=DEFAULT_CFG_COEF, extend_stride=None):
        """Paper defaults (§4.1): top-k 250, temperature 1, cfg_coef 3 (ours: DEFAULT_CFG_COEF, 2).
        `duration` defaults to one training window; longer durations slide the window forward by
        `extend_stride` seconds (default half a window) re-feeding the rest as a prompt, as the
        reference does past 30 s."""
        window = self.lm.cfg.window_seconds
        duration = window if duration is None else duration
        if not 0 < duration <= 3600:
            raise ValueError(f"duration must be in (0, 3600] seconds, got {duration}")
        extend_stride = window / 2 if extend_stride is None else extend_stride
        if not 0 < extend_stride < window:
            raise ValueError(f"extend_stride must be in (0, {window}) seconds, got {extend_stride}")
        self.generation_params = dict(use_sampling=use_sampling, top_k=top_k, top_p=top_p,
                                      temperature=temperature, cfg_coef=cfg_coef)
        self.duration, self.extend_stride = duration, extend_stride

    # -- public API --
    def generate_unconditional(self, num_samples: int) -> torch.Tensor:
        return self._generate([""] * num_samples)

    def generate(self, descriptions) -> torch.Tensor:
        return self._generate(list(descriptions))

    def generate_with_chroma(self, descriptions, melody_wavs, melody_sample_rate: int) -> torch.Tensor:
        """melody_wavs: (B, C, N) or (C, N) audio at melody_sample_rate; its chroma guides the melody."""
        from data import resample
        melody = melody_wavs if melody_wavs.dim() == 3 else melody_wavs[None]
        if melody.shape[0] != len(descriptions):
            raise ValueError(f"{len(descriptions)} descriptions but {melody.shape[0]} melody wavs")
        melody = resample(melody.mean(dim=1, keepdim=True).float(), melody_sample_rate, self.sample_rate)
        return self._generate(list(descriptions), melody=melody.to(self.device))

    def generate_continuation(self, prompt, prompt_sample_rate: int, descriptions=None) -> torch.Tensor:
        """prompt: (B, C, N) audio; the output starts with it (re-encoded) and continues it.

        Deviation (ours; the reference keeps every prompt frame): the codec's encoder looks
        `lookahead_frames` ahead (0.18 s on the tiny codec), so the prompt's last frames were encoded
        as if the music stopped at the cut. Fed to the LM, they told it the note was ending: in 48
        continuations cut 4 frames into a note, the first new note came 0-2 frames after the cut
        instead of one beat after the onset (README, "Design notes"). We drop those frames and let the
        LM generate them; the output still starts with the prompt up to its last 0.18 s."""
        from data import resample
        prompt = prompt if prompt.dim() == 3 else prompt[None]
        descriptions = [""] * prompt.shape[0] if descriptions is None else list(descriptions)
        wav = resample(prompt.mean(dim=1, keepdim=True).float(), prompt_sample_rate, self.sample_rate)
        lookahead = self.codec.lookahead_frames
        n_prompt = wav.shape[-1] // self.codec.hop_length - lookahead  # whole frames the cut did not touch
        if n_prompt < 1:
            raise ValueError(f"the prompt is shorter than {self.min_prompt_seconds:.2f} s: the codec's "
                             f"encoder looks {lookahead} frames ahead, so at least {lookahead + 1} frames are needed")
        codes = self.codec.encode(wav.to(self.device))[..., :n_prompt]  # (B, 1, N) -> (B, K, Tp)
        return self._generate(descriptions, prompt=codes)

    @property
    def min_prompt_seconds(self) -> float:
        """Shortest prompt generate_continuation takes: one frame beyond the encoder's look-ahead."""
        return (self.codec.lookahead_frames + 1) * self.codec.hop_length / self.sample_rate

    # -- the loop over windows --
    @torch.inference_mode()
    def _generate(self, descriptions, melody=None, prompt=None):
        B = len(descriptions)
        generator = torch.Generator(device="cpu").manual_seed(int(torch.randint(2**62, (1,))))
        ids, mask = self.tokenizer.encode(descriptions)
        text, text_mask = self.lm.encode_text(ids.to(self.device), mask.to(self.device))
        total = max(round(self.duration * self.frame_rate), prompt.shape[-1] if prompt is not None else 0)
        window = self.lm.cfg.window_frames
        stride = round(self.extend_stride * self.frame_rate)
        codes = prompt if prompt is not None else torch.zeros(B, self.lm.cfg.n_q, 0, dtype=torch.long)
        codes = codes.to(self.device)
        while True:
            # Sliding window: positions never go past the training window. Each window re-feeds the
            # last (window - stride) frames as a prompt and starts again from position 0.
            start = max(0, codes.shape[-1] - (window - stride)) if codes.shape[-1] >= window else 0
            n_frames = min(window, total - start)
            chroma = self._melody_chroma(melody, start, B)
            new = generate_codes(self.lm, text, text_mask, chroma, n_frames, prompt=codes[..., start:],
                                 generator=generator, **self.generation_params)
            codes = torch.cat([codes[..., :start], new], dim=-1)
            if codes.shape[-1] >= total:
                break
        return self.codec.decode(codes)  # (B, K, T) -> (B, 1, T · hop)

    def _melody_chroma(self, melody, start_frame: int, B: int) -> torch.Tensor:
        """Chroma (B, F, 12) of the melody over the window starting at `start_frame` (zeros if none)."""
        n_window = round(self.lm.cfg.window_seconds * self.sample_rate)
        if melody is None:
            return torch.zeros(B, self.lm.melody_frames, 12, device=self.device)
        start = round(start_frame / self.frame_rate * self.sample_rate)
        segment = melody[..., start:start + n_window]
        segment = F.pad(segment, (0, n_window - segment.shape[-1]))  # silence past the melody's end
        return self.lm.chroma(segment)  # (B, 1, N) -> (B, F, 12)


# ---- checkpoints: one self-describing dict ---------------------------------------------------------
def save_lm(path, lm: MusicLM, tokenizer: Tokenizer, step=0, optimizer=None, extra=None):
    """Atomic write (temp file + rename), so an interrupted save never destroys the last checkpoint."""
    import os
    ckpt = dict(config=asdict(lm.cfg), model=lm.state_dict(), vocab=list(tokenizer.vocab), step=step,
                optimizer=optimizer.state_dict() if optimizer is not None else None,
                rng=torch.get_rng_state(), **(extra or {}))
    tmp = f"{path}.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_lm(path):
    """→ (lm, tokenizer, checkpoint dict). `weights_only=True`: a checkpoint can never run code."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = LMConfig(**{"input_codebooks": ckpt["config"]["n_q"], **ckpt["config"]})  # older LMs read all K
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no LM checkpoint here (run `python train.py` first)") from None
    except Exception as error:
        raise ValueError(f"{path}: not a readable LM checkpoint ({type(error).__name__}: {error})") from None
    lm = MusicLM(cfg)
    try:
        lm.load_state_dict(ckpt["model"])
    except RuntimeError as error:  # e.g. written by an older musicgen.py with other parameter names
        first_line = str(error).splitlines()[0]
        raise ValueError(f"{path}: weights do not fit this musicgen.py ({first_line}); retrain with "
                         f"`python train.py --stage lm`") from None
    return lm, Tokenizer(ckpt["vocab"]), ckpt
