"""Generation (§3): sampling from the LM with guidance and a KV cache, and the user-facing MusicGen.

The paper's model is one LM over the codes of a frozen codec (lm.py, encodec.py). Part 1 samples from
it one pattern step at a time. At step s the LM gives the logits of every codebook for step s+1; the
conditional and the null-condition logits are mixed (classifier-free guidance, Ho & Salimans 2022),

    l = l_null + γ · (l_cond − l_null)          γ = cfg_coef (paper: 3; γ = 1 is no guidance)

and one token per codebook is drawn from softmax(l / temperature), restricted to the top-k tokens
(paper: k = 250) or to the top-p nucleus. The conditional and null branches run as one batch of 2B.
A KV cache (transformer.KVCache) keeps every layer's keys and values, so each step feeds only the
new tokens. Past one training window, windows slide.

Part 2 puts codec, LM and tokenizer behind the API of the reference library (audiocraft): `generate`,
`generate_unconditional`, `generate_with_chroma`, `generate_continuation`, each returning audio. A
`MusicGen` comes either from a run trained here (`MusicGen.load(run_dir)`) or from a published
MusicGen folder (`MusicGen.from_pretrained(folder)`, read by pretrained.py); both give the same object.

Data flow (shape letters as in DESIGN.md: B batch, K codebooks, T frames, S pattern steps, N samples,
L text tokens, D LM width, F chroma frames, card = codebook_size):

    descriptions ──tokenizer──▶ ids, mask (B, L) ──lm.encode_text──▶ text (B, L, D)
    (melody wav ──chroma──▶ (B, F, 12); prompt wav ──codec.encode──▶ codes (B, K, Tp))
    ──generate_codes, one window at a time──▶ codes (B, K, T) ──codec.decode──▶ wav (B, 1, N)
"""
from pathlib import Path

import torch

from audio import resample
from conditioners import text_tokens
from lm import LMModel, lm_from_checkpoint
from encodec import load_codec, read_checkpoint
from published.finetune import load_finetuned
from published.pretrained import load_pretrained
from transformer import KVCache


# ---- 1. sampling: one pattern step at a time, with guidance -----------------------------------------
def sample_next_tokens(logits, use_sampling=True, temperature=1.0, top_k=250, top_p=0.0, generator=None):
    """Pick one token per codebook from logits (B, K, card) → (B, K).

    The random draw has the same shape at every step whatever the logits are, so a seeded generator
    gives identical codes for any duration and with or without the KV cache.
    """
    B, K, card = logits.shape
    if not use_sampling or temperature <= 0:
        return logits.argmax(dim=-1)  # greedy decoding
    # Temperature: divide the logits, flattening (T > 1) or sharpening (T < 1) the distribution.
    logits = logits.float() / temperature
    if top_p > 0:
        # Top-p (nucleus): keep the smallest set of tokens whose probability sums to p.
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # mass *before* a token already exceeds p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    else:
        if 0 < top_k < card:
            # Top-k: keep the k largest logits. The k-th largest is the (card - k + 1)-th smallest;
            # kthvalue finds it faster than topk(k) (NOTES.md, "Decoding at the real size"). The others
            # get probability exp(-inf) = 0.
            kth = logits.kthvalue(card - top_k + 1, dim=-1, keepdim=True).values  # (B, K, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)  # (B, K, card)
    # Sample by inverting the cumulative distribution with one uniform number per (b, k), scaled to the
    # kept mass (so top-p needs no renormalisation and rounding can never run past the last token);
    # `right=True` skips the zero-probability tokens a draw of exactly 0 would otherwise land on.
    cdf = probs.cumsum(-1)                                                        # (B, K, card)
    uniform = torch.rand(B, K, 1, generator=generator, device=logits.device)
    return torch.searchsorted(cdf, uniform * cdf[..., -1:], right=True).squeeze(-1)  # (B, K, 1) -> (B, K)


def guidance(cond, null, cfg_coef: float):
    """Classifier-free guidance (§3; Ho & Salimans 2022): l = l_null + γ·(l_cond − l_null), γ = cfg_coef.
    γ = 1 is the conditional model alone; γ > 1 moves further away from the unconditional logits.
    cond, null: (B, K, card) logits with and without the condition -> (B, K, card)."""
    return null + cfg_coef * (cond - null)


@torch.inference_mode()  # like no_grad, minus autograd's version bookkeeping (a cost on every small op)
def generate_codes(lm, text, text_mask, chroma, n_frames, prompt=None, cfg_coef=3.0,
                   use_sampling=True, temperature=1.0, top_k=250, top_p=0.0, generator=None, use_cache=True):
    """Autoregressive decoding over the pattern's steps, within one window (§3).

    Args:
        lm: lm.LMModel.
        text (B, L, D), text_mask (B, L): encoded descriptions; chroma (B, F, 12) or None (no melody).
        n_frames: T, frames to return (prompt included), at most the training window.
        prompt: (B, K, Tp) codes kept verbatim at the start, or None.
        cfg_coef: classifier-free guidance γ (paper: 3); None runs the conditional model alone.
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
    if cfg_coef is not None:
        # CFG as one batch of 2B: first half conditional, second half the null condition
        # (no text: all-zero states, all masked; the null melody: the chroma of silence).
        text = torch.cat([text, torch.zeros_like(text)])
        text_mask = torch.cat([text_mask, torch.zeros_like(text_mask)])
        if chroma is not None:
            chroma = torch.cat([lm.fit_chroma(chroma), lm.null_chroma.expand(B, -1, -1)])
    conditions = lm.conditions(text, text_mask, chroma, S)  # prefix (B', P, D), cross text, step melody
    # Steps before the first unknown token are known (start step + prompt): they are fed in one pass.
    unknown_steps = (sequence == unknown).any(dim=(0, 1)).nonzero()
    first = int(unknown_steps[0]) if len(unknown_steps) else S
    cache = KVCache() if use_cache else None
    fed = 0  # steps already inside the cache
    for s in range(first, S):  # predict step s from steps < s
        begin = fed if use_cache else 0  # with the cache only the new steps (the prefix goes with the first)
        step_input = sequence[..., begin:s]
        if cfg_coef is not None:
            step_input = torch.cat([step_input, step_input])
        logits = lm(step_input, conditions, cache=cache)[:, :, -1]  # (B', K, card)
        fed = s
        if cfg_coef is not None:
            logits = guidance(*logits.chunk(2), cfg_coef)  # (2B, K, card) -> (B, K, card)
        tokens = sample_next_tokens(logits, use_sampling, temperature, top_k, top_p, generator)  # (B, K)
        # Write only where the pattern has a real token still unknown: the prompt is never overwritten.
        write = sequence[..., s] == unknown
        sequence[..., s] = torch.where(write, tokens, sequence[..., s])
    return lm.pattern.revert(sequence)  # (B, K, S) -> (B, K, T)


# ---- the codec's channels: a stereo LM reads each channel's K streams, coded by the mono codec ---------
def encode_channels(codec, wav: torch.Tensor) -> torch.Tensor:
    """wav (B, C, N) → codes (B, K·C, T): each channel through the mono codec, the C channels of level
    k next to each other (rows k·C + c), the order the stereo decoder reads. C = 1: codec.encode."""
    codes = torch.stack([codec.encode(wav[:, c:c + 1]) for c in range(wav.shape[1])], dim=2)  # (B, K, C, T)
    return codes.flatten(1, 2)  # (B, K, C, T) -> (B, K·C, T)


def decode_channels(codec, codes: torch.Tensor, channels: int) -> torch.Tensor:
    """The inverse: codes (B, K·C, T) → wav (B, C, T · hop), float32 whatever the codec's dtype."""
    return torch.cat([codec.decode(codes[:, c::channels]).float() for c in range(channels)], dim=1)


# ---- 2. the user-facing front (mirrors the reference library's API on purpose) -----------------------
MAX_DURATION = 600.0  # seconds; past this a typo is likelier than a wish (and it would take hours on a CPU)


def check_generation_params(duration=None, top_k=250, top_p=0.0, temperature=1.0):
    """The rules of the sampling parameters, in one place for the API (set_generation_params) and the
    command line (generate.py checks them before it loads a model): ValueError naming the first broken."""
    if duration is not None and not 0 < duration <= MAX_DURATION:
        raise ValueError(f"duration must be in (0, {MAX_DURATION:g}] seconds, got {duration:g}")
    if not top_k >= 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0 <= top_p <= 1:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


class MusicGen:
    """Codec + LM + tokenizer, rebuilt from a run directory or a published folder, with the reference
    library's methods.

    Every `generate*` method returns audio (B, 1, N) at `self.sample_rate`. Seeding is through torch's
    global RNG, as in the reference: `torch.manual_seed(0)` before a call makes it reproducible.
    """

    def __init__(self, codec, lm: LMModel, tokenizer):
        """tokenizer: conditioners.Tokenizer (a trained run) or t5.UnigramTokenizer (a published model)."""
        channels = lm.cfg.audio_channels  # a stereo LM reads the mono codec's K streams of each channel
        for name in ("n_q", "codebook_size", "sample_rate", "frame_rate"):  # the token streams must agree
            ours = getattr(codec, name) * (channels if name == "n_q" else 1)
            if abs(getattr(lm.cfg, name) - ours) > 1e-9:
                raise ValueError(f"the LM and the codec disagree on {name}: {getattr(lm.cfg, name)} vs "
                                 f"{ours} (were they trained together?)")
        self.codec, self.lm, self.tokenizer = codec.eval(), lm.eval(), tokenizer
        self.sample_rate, self.frame_rate = codec.sample_rate, codec.frame_rate
        self.device = next(lm.parameters()).device
        self.set_generation_params()

    @classmethod
    def load(cls, run_dir, device="cpu", dtype=None):
        """Rebuild everything from `run_dir/codec.pt` and `run_dir/lm.pt` (weights_only loads), or, for a
        fine-tuned run, from its lm.pt and the published folder it points to; dtype: the LM's (e.g.
        torch.bfloat16; None keeps float32), see `to`."""
        path = Path(run_dir) / "lm.pt"
        ckpt = read_checkpoint(path, "LM")
        if "base" in ckpt:  # fine-tuned from a published MusicGen (train.py --init-from; published/finetune.py)
            return cls(*load_finetuned(ckpt, path)).to(device, dtype)
        codec, _ = load_codec(Path(run_dir) / "codec.pt")
        lm, tokenizer = lm_from_checkpoint(ckpt, path)
        return cls(codec, lm, tokenizer).to(device, dtype)

    def to(self, device=None, dtype=None):
        """Move both models to `device`; cast the LM to `dtype` (bfloat16 halves the bytes a decoding
        step reads). The codec stays float32: its spectra and its output audio want the precision, and
        it runs once per generation, not once per step. Returns self."""
        self.lm.to(device=device, dtype=dtype)
        self.codec.to(device=device)
        self.device = next(self.lm.parameters()).device
        return self

    @classmethod
    def from_pretrained(cls, folder, device="cpu", dtype=None):
        """A published MusicGen (e.g. facebook/musicgen-small) from a local folder in the layout HF
        transformers' save_pretrained writes, in our own modules (pretrained.load_pretrained). Its
        defaults are the paper's: top-k 250, guidance 3, 30 s windows. PretrainedError if the folder
        is missing, broken, or holds a model this code does not implement. The stereo models load too:
        their LM reads 2·K streams and generate* return (B, 2, N)."""
        return cls(*load_pretrained(folder, device, dtype))

    def set_generation_params(self, duration=None, use_sampling=True, top_k=250, top_p=0.0, temperature=1.0,
                              cfg_coef="model", extend_stride=None):
        """Paper defaults (§4.1): top-k 250, temperature 1; cfg_coef "model" takes the LM's own default
        (LMConfig.cfg_coef; paper 3), None runs the conditional model alone. `duration` defaults to one training window; longer durations slide the window forward by
        `extend_stride` seconds (default half a window) re-feeding the rest as a prompt, as the
        reference does past 30 s."""
        check_generation_params(duration, top_k, top_p, temperature)
        window = self.lm.cfg.window_seconds
        duration = window if duration is None else duration
        extend_stride = window / 2 if extend_stride is None else extend_stride
        if not 0 < extend_stride < window:
            raise ValueError(f"extend_stride must be in (0, {window}) seconds, got {extend_stride}")
        cfg_coef = self.lm.cfg.cfg_coef if cfg_coef == "model" else cfg_coef
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
        if self.lm.melody_projection is None:
            raise ValueError("this model has no melody input (a text-to-music MusicGen; use a melody model)")
        melody = melody_wavs if melody_wavs.dim() == 3 else melody_wavs[None]
        if melody.shape[0] != len(descriptions):
            raise ValueError(f"{len(descriptions)} descriptions but {melody.shape[0]} melody wavs")
        melody = resample(melody.mean(dim=1, keepdim=True).float(), melody_sample_rate, self.sample_rate)
        return self._generate(list(descriptions), melody=melody.to(self.device))

    def generate_continuation(self, prompt, prompt_sample_rate: int, descriptions=None) -> torch.Tensor:
        """prompt: (B, C, N) audio; the output starts with it (re-encoded) and continues it.

        The paper (and the reference) keeps every prompt frame. With LMConfig.trim_prompt_lookahead
        (the tiny recipe) the last `codec.lookahead_frames` frames are dropped and generated anew: the
        encoder looks that far ahead, so it encoded them as if the music stopped at the cut, and the LM
        read that as "the note ends here" (NOTES.md, "Continuation drops look-ahead frames")."""
        prompt = prompt if prompt.dim() == 3 else prompt[None]
        descriptions = [""] * prompt.shape[0] if descriptions is None else list(descriptions)
        C = self.lm.cfg.audio_channels
        channels = prompt.mean(dim=1, keepdim=True) if C == 1 or prompt.shape[1] == 1 else prompt  # (B, 1 or C, N)
        wav = resample(channels.expand(-1, C, -1).float(), prompt_sample_rate, self.sample_rate)  # (B, C, N)
        lookahead = self.prompt_lookahead_frames
        n_prompt = wav.shape[-1] // self.codec.hop_length - lookahead  # whole frames kept
        if n_prompt < 1:
            raise ValueError(f"the prompt is shorter than {self.min_prompt_seconds:.2f} s: the codec's "
                             f"encoder looks {lookahead} frames ahead, so at least {lookahead + 1} frames are needed")
        codes = encode_channels(self.codec, wav.to(self.device, self.codec_dtype))[..., :n_prompt]  # (B, K·C, Tp)
        return self._generate(descriptions, prompt=codes)

    @property
    def codec_dtype(self) -> torch.dtype:
        return next(self.codec.parameters()).dtype

    @property
    def min_prompt_seconds(self) -> float:
        """Shortest prompt generate_continuation takes: one frame (beyond the trimmed look-ahead)."""
        return (self.prompt_lookahead_frames + 1) * self.codec.hop_length / self.sample_rate

    @property
    def prompt_lookahead_frames(self) -> int:
        """Frames dropped from the end of a continuation's prompt: 0 in the paper."""
        return self.codec.lookahead_frames if self.lm.cfg.trim_prompt_lookahead else 0

    # -- the loop over windows --
    @torch.inference_mode()
    def _generate(self, descriptions, melody=None, prompt=None):
        B = len(descriptions)
        # The sampler's generator lives where the logits are (torch.rand refuses a CPU generator for
        # CUDA tensors); its seed comes from torch's global RNG, so torch.manual_seed reproduces a call.
        generator = torch.Generator(device=self.device).manual_seed(int(torch.randint(2**62, (1,))))
        ids, mask = text_tokens(self.tokenizer, descriptions)  # "" is the null condition: no token
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
            chroma = self._melody_chroma(melody, start)
            new = generate_codes(self.lm, text, text_mask, chroma, n_frames, prompt=codes[..., start:],
                                 generator=generator, **self.generation_params)
            codes = torch.cat([codes[..., :start], new], dim=-1)
            if codes.shape[-1] >= total:
                break
        return decode_channels(self.codec, codes, self.lm.cfg.audio_channels)  # (B, C, T · hop)

    def _melody_chroma(self, melody, start_frame: int):
        """Chroma (B, F', 12) of the melody over the window starting at `start_frame`, or None (the null
        melody) if there is no melody there. A part shorter than the window is repeated to fill it
        (LMModel.fit_chroma), as the reference fills a short melody."""
        if melody is None:
            return None
        n_window = round(self.lm.cfg.window_seconds * self.sample_rate)
        start = round(start_frame / self.frame_rate * self.sample_rate)
        segment = melody[..., start:start + n_window]  # (B, 1, N') with N' <= one window
        return self.lm.chroma(segment) if segment.shape[-1] > 0 else None  # (B, 1, N') -> (B, F', 12)
