"""MusicGen, the user-facing front: codec + LM + tokenizer, with the reference library's methods (§3).

The paper's model is one LM over the codes of a frozen codec (lm.py, encodec.py); this file puts them
together behind the API of the reference library (audiocraft): `generate`, `generate_unconditional`,
`generate_with_chroma`, `generate_continuation`, each returning audio. A `MusicGen` comes either from
a run trained here (`MusicGen.load(run_dir)`) or from a published MusicGen folder
(`MusicGen.from_pretrained(folder)`, read by pretrained.py); both give the same object.

Data flow (shape letters as in DESIGN.md: B batch, K codebooks, T frames, N samples, L text tokens,
D LM width, F chroma frames):

    descriptions ──tokenizer──▶ ids, mask (B, L) ──lm.encode_text──▶ text (B, L, D)
    (melody wav ──chroma──▶ (B, F, 12); prompt wav ──codec.encode──▶ codes (B, K, Tp))
    ──sampling.generate_codes, one window at a time (§3)──▶ codes (B, K, T) ──codec.decode──▶ wav (B, 1, N)

Generation runs the LM one pattern step at a time with a KV cache (§3); classifier-free guidance runs
the conditional and the null condition as one batch of 2B. Past one training window, windows slide.
"""
from pathlib import Path

import torch

from audio import resample
from lm import LMModel, load_lm
from pretrained import load_pretrained
from spectral_codec import load_codec
from sampling import generate_codes


# ---- the user-facing front (mirrors the reference library's API on purpose) -----------------------
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
        for name in ("n_q", "codebook_size", "sample_rate", "frame_rate"):  # the token streams must agree
            if abs(getattr(lm.cfg, name) - getattr(codec, name)) > 1e-9:
                raise ValueError(f"the LM and the codec disagree on {name}: {getattr(lm.cfg, name)} vs "
                                 f"{getattr(codec, name)} (were they trained together?)")
        self.codec, self.lm, self.tokenizer = codec.eval(), lm.eval(), tokenizer
        self.sample_rate, self.frame_rate = codec.sample_rate, codec.frame_rate
        self.device = next(lm.parameters()).device
        self.set_generation_params()

    @classmethod
    def load(cls, run_dir, device="cpu", dtype=None):
        """Rebuild everything from `run_dir/codec.pt` and `run_dir/lm.pt` (weights_only loads); dtype:
        the LM's (e.g. torch.bfloat16; None keeps float32), see `to`."""
        codec, _ = load_codec(Path(run_dir) / "codec.pt")
        lm, tokenizer, _ = load_lm(Path(run_dir) / "lm.pt")
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
        is missing, broken, or holds a model this code does not implement (stereo)."""
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
        wav = resample(prompt.mean(dim=1, keepdim=True).float(), prompt_sample_rate, self.sample_rate)
        lookahead = self.prompt_lookahead_frames
        n_prompt = wav.shape[-1] // self.codec.hop_length - lookahead  # whole frames kept
        if n_prompt < 1:
            raise ValueError(f"the prompt is shorter than {self.min_prompt_seconds:.2f} s: the codec's "
                             f"encoder looks {lookahead} frames ahead, so at least {lookahead + 1} frames are needed")
        codes = self.codec.encode(wav.to(self.device, self.codec_dtype))[..., :n_prompt]  # (B, 1, N) -> (B, K, Tp)
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
        ids, mask = self.tokenizer.encode(descriptions)
        # "" is the null condition, as in the reference library (which zeroes the mask of an empty
        # description) and as guidance's null branch: the word tokenizer gives it no token, but T5's
        # gives it one (</s>), which the mask removes here.
        mask = mask & torch.tensor([d != "" for d in descriptions])[:, None]  # (B, L)
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
        return self.codec.decode(codes).float()  # (B, K, T) -> (B, 1, T · hop), float32 whatever the codec's dtype

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
