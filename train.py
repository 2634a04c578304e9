"""Train MusicGen from scratch on a laptop CPU: the codec (stage 1), then the LM on cached codes (stage 2).

Paper §4.1: MusicGen trains an EnCodec model first, freezes it, encodes the whole dataset once, and
trains one transformer LM on those discrete codes. This script does exactly that at toy scale:

    python train.py                     # toy dataset → codec → cached codes → LM → samples/*.wav
    python train.py --stage lm --resume # continue the LM stage exactly where it stopped

Reads top to bottom like nanoGPT's train.py: setup, data, model, optimizer, lr schedule, eval, loop.
Shape letters: B batch, K codebooks, T frames, N samples, F chroma frames, L text tokens.
"""
import argparse
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

import data
from audio import write_audio
from conditioners import ConditionDropout, Tokenizer, word_dropout
from discriminator import MSSTFTDiscriminator, discriminator_hinge_loss, feature_matching_loss, generator_adversarial_loss
from encodec import EncodecConfig, EncodecModel
from losses import ReconstructionLoss
from metrics import codec_metrics
from musicgen import LMConfig, MusicGen, MusicLM, check_input_codebooks, load_lm, save_lm
from rvq import perplexity
from spectral_codec import build_codec, load_codec


@dataclass
class Preset:
    """What one run trains: the two models' configs and the training budgets. The defaults are the
    paper's (EnCodec's for stage 1); TINY below is the laptop recipe."""
    codec: EncodecConfig = field(default_factory=EncodecConfig)
    codec_steps: int = 300_000           # EnCodec: 300 epochs of 2000 updates
    codec_batch: int = 64                # crops per step
    codec_crop_seconds: float = 1.0      # crop length
    codec_lr: float = 3e-4               # Adam, betas (0.5, 0.9)
    codec_quantizer_warmup: float = 0.0  # fraction of steps trained without the RVQ (then k-means init)
    codec_grad_clip: float = 0.0         # max gradient norm of a codec step (0 = none)
    lm: LMConfig = field(default_factory=LMConfig)
    lm_steps: int = 1_000_000
    lm_batch: int = 192                  # windows of lm.window_seconds (30 s)
    lm_lr: float = 1e-4                  # AdamW, betas (0.9, 0.95), weight decay 0.1
    lm_warmup: int = 4000                # linear warm-up steps, then cosine decay
    n_clips: int = 1000                  # toy clips built when data/toy is missing (paper: 20k hours)


# ==== the tiny recipe: every value it changes from the paper, and why (evidence: NOTES.md) ============
TINY_CODEC = replace(
    EncodecConfig(),
    sample_rate=16000,           # paper: 32000. Why: half the samples for the same music on a CPU.
    ratios=(8, 5, 4, 2),         # paper: (8, 5, 4, 4). Why: keeps the paper's 50 Hz at 16 kHz.
    n_filters=8,                 # paper: 64. Why: a model that trains in 3 CPU minutes.
    dimension=64,                # paper: 128. Why: the same.
    codebook_size=256,           # paper: 2048. Why: 1000 clips cannot fill 2048 codes.
    dead_threshold=0.1,          # paper: 2. Why: 192 vectors a batch for 256 codes, not 3200 for 2048.
    spectral=True,               # paper: False (SEANet). Why: a few-minute SEANet loses the melody.
    snake=True,                  # paper: False (ELU). Why: periodic activations help pitched audio.
    l1_weight=0.0,               # paper: 0.1. Why: the spectral decoder invents its own phase.
    mel_weight=1.0,              # paper: 2. Why: fixed weights, equal to the two pitch losses'.
    pitch_weight=1.0,            # paper: 0. Why: mel bands are too wide to tell a semitone apart.
    frequency_weight=1.0,        # paper: 0. Why: without it the notes drift by tens of cents.
    mel_scales=(64, 128, 256, 512, 1024, 2048),  # paper: from 32. Why: 8 mel bands at 32 are too coarse.
    adversarial=False,           # paper: True. Why: in CPU minutes the discriminator only costs steps.
)
TINY_LM = replace(
    LMConfig(),
    dim=128,                     # paper: 1024. Why: a model that trains in 5 CPU minutes.
    n_layers=4,                  # paper: 24. Why: the same.
    n_heads=4,                   # paper: 16. Why: head width 32.
    ffn_dim=512,                 # paper: 4096 (4·D). Why: 4·D kept.
    dropout=0.1,                 # paper: 0. Why: 1000 clips are few even for 1.6M parameters.
    window_seconds=4.0,          # paper: 30. Why: the toy clips are 4 s long.
    input_codebooks=1,           # paper: all K. Why: the noisy finer codebooks drowned the beat.
    text_dim=128,                # paper: T5-base, 768. Why: trained from scratch on 1000 descriptions.
    text_layers=2,               # paper: 12. Why: the same.
    text_heads=4,                # paper: 12. Why: the same.
    cfg_dropout=0.1,             # paper: 0.3. Why: at 0.3 the tiny LM did not learn the tempo words.
    melody_dropout=0.1,          # paper: 0.2. Why: the tiny LM then leans on the melody more.
    start_weight=5.0,            # paper: 1. Why: the first frames teach the words the audio cannot.
    cfg_coef=2.0,                # paper: 3. Why: stronger guidance pushes the tiny LM off its data.
    trim_prompt_lookahead=True,  # paper: False. Why: look-ahead frames say "the note stops here".
)
TINY = Preset(
    codec=TINY_CODEC, lm=TINY_LM,
    codec_steps=3000,            # paper: 300k. Why: 3 minutes on 2 CPU cores.
    codec_batch=16,              # paper: 64. Why: the same.
    codec_crop_seconds=0.24,     # paper: 1. Why: on a CPU the number of updates limits learning.
    codec_lr=1e-3,               # paper: 3e-4. Why: 100x fewer steps; 2e-3 lost the melody.
    codec_quantizer_warmup=0.5,  # paper: 0. Why: codebooks fitted to an untrained encoder lose pitch.
    codec_grad_clip=10.0,        # paper: none. Why: one gradient spike once silenced the decoder.
    lm_steps=1500,               # paper: 1M. Why: 5 minutes on 2 CPU cores.
    lm_batch=12,                 # paper: 192. Why: the same.
    lm_lr=2e-3,                  # paper: 1e-4. Why: tiny models take larger steps.
    lm_warmup=100,               # paper: 4000. Why: 1500 steps in all.
)
PRESETS = {
    "tiny": TINY,
    # Untested end to end: wider models and about 7x the steps of tiny.
    "long": replace(TINY, n_clips=2000, codec_steps=12000, codec=replace(TINY_CODEC, n_filters=16, dimension=128),
                    lm_steps=10000, lm=replace(TINY_LM, dim=384, n_layers=6, n_heads=6, ffn_dim=1536)),
}


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def lm_optimizer(lm, lr: float) -> torch.optim.AdamW:
    """AdamW as the paper (betas 0.9, 0.95; weight decay 0.1), the decay on matrices only: shrinking
    LayerNorm gains and biases towards 0 is not regularisation."""
    return torch.optim.AdamW([{"params": [p for p in lm.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                              {"params": [p for p in lm.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def cosine_lr(step: int, max_steps: int, warmup: int, lr: float) -> float:
    """Linear warmup, then cosine decay to 10% (paper: cosine schedule with warmup)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ==== stage 1: the codec ===============================================================================
def codec_batch(wavs, indices, crop, generator):
    """Random crops of `crop` samples from the clips `indices` (zero-padded if shorter): (B, 1, crop)."""
    batch = []
    for i in indices.tolist():
        wav = wavs[i]
        start = int(torch.randint(0, max(1, wav.shape[-1] - crop + 1), (1,), generator=generator))
        piece = wav[:, start:start + crop]
        batch.append(torch.nn.functional.pad(piece, (0, crop - piece.shape[-1])))
    return torch.stack(batch)


def train_codec(out_dir, data_dir, preset: Preset, max_steps=None, seed=0, device="cpu", resume=False,
                eval_every=500, n_valid=32):
    """Stage 1: train the codec of `preset` on the clips of `data_dir`; writes `out_dir/codec.pt` and a
    few reconstructions in `out_dir/codec_samples/`. Returns a summary dict of held-out metrics."""
    # ---- setup ----
    torch.manual_seed(seed)
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "codec.pt"
    max_steps = preset.codec_steps if max_steps is None else max_steps
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True) if resume and ckpt_path.exists() else None
    cfg = EncodecConfig(**ckpt["config"]) if ckpt is not None else preset.codec

    # ---- data: raw clips in memory; random crops of whole frames ----
    clips = data.load_clips(data_dir, cfg.sample_rate)
    train_wavs = [c.wav for c in clips if c.split == "train"]
    if not train_wavs:
        raise SystemExit(f"error: no training clip in {data_dir}")
    valid_wavs = [c.wav for c in clips if c.split != "train"][:n_valid]
    valid_name = "held-out"
    if not valid_wavs:  # a small user folder: say so rather than call training clips held-out
        valid_wavs, valid_name = train_wavs[:n_valid], "training (no held-out clips)"
    n = min(w.shape[-1] for w in valid_wavs)
    valid_wav = torch.stack([w[:, :n] for w in valid_wavs])  # (B, 1, N)
    crop = max(1, round(preset.codec_crop_seconds * cfg.frame_rate)) * cfg.hop_length

    # ---- model, losses, optimizers (EnCodec: Adam, betas (0.5, 0.9)) ----
    codec = build_codec(cfg).to(device)
    reconstruction_loss = ReconstructionLoss(cfg).to(device)
    optimizer = torch.optim.Adam(codec.parameters(), lr=preset.codec_lr, betas=(0.5, 0.9))
    disc = disc_optimizer = None
    if cfg.adversarial:
        disc = MSSTFTDiscriminator(cfg.disc_scales, cfg.disc_filters).to(device)
        disc_optimizer = torch.optim.Adam(disc.parameters(), lr=preset.codec_lr, betas=(0.5, 0.9))
    print(f"codec: {sum(p.numel() for p in codec.parameters()) / 1e6:.2f}M parameters, hop {cfg.hop_length} "
          f"({cfg.frame_rate:g} Hz), {cfg.n_q} × {cfg.codebook_size} codes = "
          f"{codec.quantizer.bitrate(cfg.frame_rate) / 1000:.2f} kbps, adversarial {'on' if disc else 'off'}, "
          f"{len(train_wavs)} train / {len(valid_wavs)} {valid_name} clips")
    generator = torch.Generator().manual_seed(seed)
    step = 0
    warmup_steps = round(preset.codec_quantizer_warmup * max_steps)

    def init_codebooks():
        """k-means initialisation of every codebook on 64 one-second crops (3200 vectors at 50 Hz): a
        training batch of short crops has fewer vectors than a codebook has entries."""
        ids = torch.randint(0, len(train_wavs), (64,), generator=generator)
        with torch.no_grad():
            z = codec.encoder(codec_batch(train_wavs, ids, cfg.hop_length * round(cfg.frame_rate), generator).to(device))
        codec.quantizer.init_codebooks(z, vectors_per_batch=preset.codec_batch * crop // cfg.hop_length)
    if ckpt is not None:  # weights (incl. the EMA codebooks), optimizers and both RNGs: an exact resume
        codec.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if disc is not None:
            disc.load_state_dict(ckpt["discriminator"])
            disc_optimizer.load_state_dict(ckpt["disc_optimizer"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["rng"])
        step = ckpt["step"]
        print(f"resumed the codec from {ckpt_path} at step {step}")

    def save(step):
        extra = dict(optimizer=optimizer.state_dict(), generator=generator.get_state(), rng=torch.get_rng_state())
        if disc is not None:
            extra.update(discriminator=disc.state_dict(), disc_optimizer=disc_optimizer.state_dict())
        codec.save(ckpt_path, step=step, **extra)

    # ---- loop ----
    codec.train()
    bar = tqdm(total=max_steps, initial=step, desc="codec", dynamic_ncols=True)
    started = time.time()
    valid = None
    try:
        while step < max_steps:
            # Two cosine cycles: the warm-up anneals the autoencoder (pitch appears as the lr comes
            # down) before k-means reads its latents; the quantized phase restarts at half the lr.
            if step < warmup_steps:
                lr = cosine_lr(step, warmup_steps, 50, preset.codec_lr)
            else:
                lr = cosine_lr(step - warmup_steps, max_steps - warmup_steps, 50,
                               preset.codec_lr / 2 if warmup_steps else preset.codec_lr)
            for group in optimizer.param_groups + (disc_optimizer.param_groups if disc else []):
                group["lr"] = lr
            if step == warmup_steps:
                init_codebooks()  # the end of the quantizer warm-up
            ids = torch.randint(0, len(train_wavs), (preset.codec_batch,), generator=generator)
            wav = codec_batch(train_wavs, ids, crop, generator).to(device)  # (B, 1, crop)
            quantize = step >= warmup_steps
            recon, codes, commitment = codec(wav, quantize=quantize)         # (B, 1, crop), (B, k, T)
            loss, mel = reconstruction_loss(wav, recon, commitment)
            if disc is not None:
                # Generator side: fool every scale of the discriminator, match its features on real audio.
                real_outputs, fake_outputs = disc(wav), disc(recon)
                loss = loss + cfg.adversarial_weight * generator_adversarial_loss(fake_outputs) \
                    + cfg.feature_weight * feature_matching_loss(real_outputs, fake_outputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Gradient clipping (tiny recipe; EnCodec has none, DAC clips): one spike at the peak lr can
            # throw the spectral decoder's log-magnitudes past their clamp, where no gradient comes back.
            if preset.codec_grad_clip:
                torch.nn.utils.clip_grad_norm_(codec.parameters(), preset.codec_grad_clip)
            optimizer.step()
            if disc is not None:
                # Discriminator side: hinge loss on real vs (detached) reconstructions.
                d_loss = discriminator_hinge_loss(disc(wav), disc(recon.detach()))
                disc_optimizer.zero_grad(set_to_none=True)
                d_loss.backward()
                disc_optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", mel=f"{mel.item():.3f}", n_q=codes.shape[1] if quantize else 0,
                            usage="/".join(f"{p:.0f}" for p in perplexity(codes, cfg.codebook_size)) if quantize
                            else "warm-up")
            if (step % eval_every == 0 and step > warmup_steps) or step == max_steps:
                valid, _ = codec_metrics(codec, valid_wav, per_n_q=True)
                tqdm.write(f"step {step}: {valid_name.split()[0]} mel distance {valid['mel_distance']:.3f} "
                           f"(1..K codebooks: {' / '.join(f'{m:.3f}' for m in valid['mel_distance_per_n_q'])}), "
                           f"SI-SNR {valid['si_snr_db']:.1f} dB, chroma cosine {valid['chroma_cosine']:.2f}, perplexity "
                           f"{' / '.join(f'{p:.0f}' for p in valid['perplexity'])} of {cfg.codebook_size}")
                save(step)
    except KeyboardInterrupt:
        tqdm.write(f"interrupted: saving the codec at step {step} to {ckpt_path} (continue with --resume)")
        save(step)
        raise
    bar.close()
    save(step)
    seconds = time.time() - started
    valid, recon = codec_metrics(codec, valid_wav, per_n_q=True)
    # A few reconstructions to listen to, next to the checkpoint.
    samples = out / "codec_samples"
    samples.mkdir(exist_ok=True)
    for i in range(min(3, len(valid_wavs))):
        write_audio(samples / f"{i}_original.wav", valid_wavs[i], cfg.sample_rate)
        write_audio(samples / f"{i}_reconstruction.wav", recon[i], cfg.sample_rate)
    print(f"codec reconstructions in {samples}")
    return dict(valid, steps=step, seconds=seconds)


# ==== stage 2: the language model ======================================================================
def lm_config_for(codec: EncodecModel, lm_cfg: LMConfig, **changes) -> LMConfig:
    """The LM's token streams come from the codec (n_q, codebook_size, frame_rate, sample_rate): copy
    them instead of configuring them twice, so the two can never disagree."""
    return replace(lm_cfg, n_q=codec.n_q, codebook_size=codec.codebook_size, frame_rate=codec.frame_rate,
                   sample_rate=codec.sample_rate, **changes)


def encode_dataset(codec: EncodecModel, clips, device, batch_size=32):
    """Encode every clip once with the frozen codec (§4.1): (1, N) each → codes (K, T) each."""
    codes = []
    for start in tqdm(range(0, len(clips), batch_size), desc="encode", leave=False):
        batch = [clip.wav for clip in clips[start:start + batch_size]]
        n = max(wav.shape[-1] for wav in batch)
        wav = torch.stack([torch.nn.functional.pad(w, (0, n - w.shape[-1])) for w in batch]).to(device)
        with torch.no_grad():
            batch_codes = codec.encode(wav).cpu()  # (B, 1, N) -> (B, K, T)
        for clip, clip_codes in zip(clips[start:start + batch_size], batch_codes):
            codes.append(clip_codes[:, :math.ceil(clip.wav.shape[-1] / codec.hop_length)])
    return codes


def lm_batch(clips, codes, indices, window, hop, generator):
    """A batch of random crops: codes (B, K, T) and the aligned melody audio (B, 1, T · hop)."""
    batch_codes, batch_melody = [], []
    for i in indices.tolist():
        clip_codes = codes[i]
        n_frames = clip_codes.shape[-1]
        start = int(torch.randint(0, max(1, n_frames - window + 1), (1,), generator=generator))
        crop = clip_codes[:, start:start + window]
        melody = clips[i].melody_wav if clips[i].melody_wav is not None else clips[i].wav
        melody = melody[:, start * hop:(start + window) * hop]
        batch_codes.append(crop)  # every clip is at least one window long (checked in train_lm)
        batch_melody.append(torch.nn.functional.pad(melody, (0, window * hop - melody.shape[-1])))
    return torch.stack(batch_codes), torch.stack(batch_melody)


def train_lm(out_dir, data_dir, preset: Preset, pattern="delay", max_steps=None, seed=0, device="cpu",
             resume=False, eval_every=250, encoded=None):
    """Stage 2: train the LM of `preset` on codes of `out_dir/codec.pt`; writes `out_dir/lm.pt`.
    `encoded` = (clips, codes) from `encode_dataset` with this codec skips re-encoding (the pattern
    ablation trains six LMs on the same codes).

    Returns a summary dict: held-out loss per codebook, seconds, tokens per second, steps.
    """
    # ---- setup ----
    torch.manual_seed(seed)
    device = torch.device(device)
    out = Path(out_dir)
    max_steps = preset.lm_steps if max_steps is None else max_steps
    codec, _ = load_codec(out / "codec.pt")
    codec = codec.to(device).eval()
    resume_path = out / "lm.pt"

    # ---- data: every clip encoded once by the frozen codec (§4.1), kept in memory as codes ----
    if encoded is None:
        clips = data.load_clips(data_dir, codec.sample_rate)
        codes = encode_dataset(codec, clips, device)
    else:
        clips, codes = encoded
    cfg = lm_config_for(codec, preset.lm, pattern=pattern)
    window = cfg.window_frames
    long_enough = [i for i, c in enumerate(codes) if c.shape[-1] >= window]
    if len(long_enough) < len(codes):
        print(f"note: {len(codes) - len(long_enough)} clips shorter than the {cfg.window_seconds} s window are skipped")
    train_ids = torch.tensor([i for i in long_enough if clips[i].split == "train"])
    valid_ids = torch.tensor([i for i in long_enough if clips[i].split != "train"])
    if len(train_ids) == 0:
        raise SystemExit(f"error: no training clip in {data_dir} is at least {cfg.window_seconds} s long")
    valid_name = "held-out"
    if len(valid_ids) == 0:  # a small user folder: say so rather than call training clips held-out
        valid_ids, valid_name = train_ids[:preset.lm_batch], "training (no held-out clips)"
    # Resuming restores everything a step depends on: weights, optimizer moments, the data generator,
    # torch's RNG and the vocabulary; so the next step's loss equals the uninterrupted run's.
    ckpt = torch.load(resume_path, map_location="cpu", weights_only=True) if resume and resume_path.exists() else None
    if ckpt is not None:
        tokenizer, cfg = Tokenizer(ckpt["vocab"]), LMConfig(**ckpt["config"])
    else:
        tokenizer = Tokenizer.build([clips[i].description for i in train_ids.tolist()])
        cfg = replace(cfg, text_vocab_size=len(tokenizer.vocab))
    # CFG dropout (null condition for all) and melody attribute dropout, §2.4 / §3.
    condition_dropout = ConditionDropout(cfg.cfg_dropout, cfg.melody_dropout)

    # ---- model ----
    lm = MusicLM(cfg).to(device)
    n_params = sum(p.numel() for p in lm.parameters())
    print(f"LM: {n_params / 1e6:.2f}M parameters, pattern {cfg.pattern}, window {window} frames, "
          f"vocabulary {len(tokenizer.vocab)} words, {len(train_ids)} train / {len(valid_ids)} {valid_name} clips")

    # ---- optimizer: AdamW as the paper, (0.9, 0.95), weight decay 0.1 on matrices only ----
    optimizer = lm_optimizer(lm, preset.lm_lr)
    generator = torch.Generator().manual_seed(seed)  # batches and condition dropout
    step = 0
    if ckpt is not None:
        lm.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["rng"])
        step = ckpt["step"]
        print(f"resumed the LM from {resume_path} at step {step}")

    def conditions(descriptions, melody, train: bool):
        """Descriptions + melody audio → encoded text (B, L, D), mask (B, L), chroma (B, F, 12)."""
        chroma = lm.chroma(melody.to(device))  # (B, 1, N) -> (B, F, 12)
        if train:
            descriptions = word_dropout(descriptions, cfg.word_dropout, generator)
            descriptions, chroma = condition_dropout(descriptions, chroma, generator)
        ids, mask = tokenizer.encode(descriptions)
        text, text_mask = lm.encode_text(ids.to(device), mask.to(device))
        return text, text_mask, chroma

    # ---- eval: held-out loss per codebook (the paper reports NLL / perplexity in Table 3) ----
    @torch.no_grad()
    def evaluate_lm():
        lm.eval()
        eval_gen = torch.Generator().manual_seed(1234)
        total, count = torch.zeros(cfg.n_q), 0
        for start in range(0, len(valid_ids), preset.lm_batch):
            ids = valid_ids[start:start + preset.lm_batch]
            batch_codes, melody = lm_batch(clips, codes, ids, window, codec.hop_length, eval_gen)
            text, text_mask, chroma = conditions([clips[i].description for i in ids.tolist()], melody, train=False)
            _, per_codebook = lm.compute_loss(batch_codes.to(device), text, text_mask, chroma)
            total += per_codebook.cpu() * len(ids)
            count += len(ids)
        lm.train()
        return total / count

    def save(step):
        save_lm(resume_path, lm, tokenizer, step=step, optimizer=optimizer,
                extra=dict(generator=generator.get_state()))

    # ---- loop ----
    lm.train()
    bar = tqdm(total=max_steps, initial=step, desc="lm", dynamic_ncols=True)
    tokens_seen, started = 0, time.time()
    valid = None
    try:
        while step < max_steps:
            # lr schedule: warmup + cosine (paper §4.1)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, max_steps, preset.lm_warmup, preset.lm_lr)
            ids = train_ids[torch.randint(0, len(train_ids), (preset.lm_batch,), generator=generator)]
            batch_codes, melody = lm_batch(clips, codes, ids, window, codec.hop_length, generator)
            text, text_mask, chroma = conditions([clips[i].description for i in ids.tolist()], melody, train=True)
            loss, per_codebook = lm.compute_loss(batch_codes.to(device), text, text_mask, chroma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)  # paper: gradient clipping at 1
            optimizer.step()
            step += 1
            tokens_seen += batch_codes.numel()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", per_k="/".join(f"{x:.2f}" for x in per_codebook.tolist()),
                            tok_s=f"{tokens_seen / (time.time() - started):.0f}")
            if step % eval_every == 0 or step == max_steps:
                valid = evaluate_lm()
                # Plain cross-entropies on both sides (the objective also weighs the first frames, see
                # MusicLM.compute_loss), so that train and held-out losses can be compared.
                tqdm.write(f"step {step}: train loss {per_codebook.mean():.3f} (objective {loss.item():.3f}), "
                           f"{valid_name.split()[0]} loss {valid.mean():.3f} "
                           f"per codebook {[round(x, 3) for x in valid.tolist()]} "
                           f"(chance: ln {cfg.codebook_size} = {math.log(cfg.codebook_size):.2f})")
                save(step)
    except KeyboardInterrupt:
        tqdm.write(f"interrupted: saving the LM at step {step} to {resume_path} (continue with --resume)")
        save(step)
        raise
    bar.close()
    save(step)
    valid = evaluate_lm() if valid is None else valid
    seconds = time.time() - started
    return dict(valid_loss_per_codebook=valid.tolist(), valid_loss=float(valid.mean()), steps=step,
                seconds=seconds, tokens_per_second=tokens_seen / max(seconds, 1e-9))


# ==== samples: what a reader listens to at the end =====================================================
def write_samples(out_dir, data_dir, n_text=4, seed=0):
    """A few held-out descriptions, one melody-conditioned sample and one continuation → samples/*.wav."""
    out = Path(out_dir)
    model = MusicGen.load(out)
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    clips = [c for c in data.load_clips(data_dir, model.sample_rate, split="heldout")]
    if not clips:
        clips = data.load_clips(data_dir, model.sample_rate)
    clips = clips[:n_text]
    torch.manual_seed(seed)
    written = []
    audio = model.generate([c.description for c in clips])  # (B, 1, N)
    for i, (clip, wav) in enumerate(zip(clips, audio)):
        written.append((samples / f"text_{i}.wav", wav, clip.description))
    melody_clip = clips[0]
    melody = melody_clip.melody_wav if melody_clip.melody_wav is not None else melody_clip.wav
    wav = model.generate_with_chroma([clips[1 % len(clips)].description], melody[None], model.sample_rate)[0]
    written.append((samples / "melody_reference.wav", melody, "the melody given as chroma"))
    written.append((samples / "melody.wav", wav, f"{clips[1 % len(clips)].description} + that melody"))
    prompt = clips[0].wav[None, :, :model.sample_rate * 2]  # the first 2 s of a held-out clip
    wav = model.generate_continuation(prompt, model.sample_rate, [clips[0].description])[0]
    written.append((samples / "continuation.wav", wav, f"continues 2 s of: {clips[0].description}"))
    for path, wav, caption in written:
        write_audio(path, wav.cpu(), model.sample_rate)
        print(f"  {path}: {caption}")
    return [path for path, _, _ in written]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train MusicGen from scratch: stage 1 the codec, stage 2 the LM on its codes (paper §4.1). "
                    "With no argument it builds the toy dataset, trains both stages and writes samples.")
    p.add_argument("--stage", choices=["codec", "lm", "all"], default="all", help="what to train (default: all)")
    p.add_argument("--data", default="data/toy",
                   help="folder with audio + manifest.jsonl (default data/toy, generated if missing)")
    p.add_argument("--out", default="runs/tiny", help="run directory for checkpoints and samples")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="tiny: ~9 min on a 2-core CPU; long: bigger models and 7-10× the steps (untested end to end)")
    p.add_argument("--pattern", default="delay",
                   choices=["parallel", "delay", "partial-delay", "flatten", "partial-flatten", "vall-e"],
                   help="codebook interleaving pattern of the LM (paper §2.2; default delay)")
    p.add_argument("--input-codebooks", choices=["all", "1", "2", "3", "4"],
                   help="codebooks the LM reads: a number, or 'all' (the paper); default: the preset's (tiny: 1)")
    p.add_argument("--max-steps", type=int, help="override the preset's steps for the chosen stage(s)")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size for the chosen stage(s)")
    p.add_argument("--lr", type=float, help="override the preset's learning rate for the chosen stage(s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (data order, init, dropout)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), or a torch device name")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--eval-every", type=int, default=500, help="steps between held-out evaluations")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    preset = PRESETS[args.preset]
    overrides = {}
    for stage in (["codec", "lm"] if args.stage == "all" else [args.stage]):
        if args.max_steps is not None:
            overrides[f"{stage}_steps"] = args.max_steps
        if args.batch_size is not None:
            overrides[f"{stage}_batch"] = args.batch_size
        if args.lr is not None:
            overrides[f"{stage}_lr"] = args.lr
    if args.input_codebooks is not None:
        overrides["lm"] = replace(preset.lm, input_codebooks=None if args.input_codebooks == "all"
                                  else int(args.input_codebooks))
    preset = replace(preset, **overrides)
    if args.stage in ("lm", "all"):  # a pattern the LM could not read fails now, not after the codec stage
        try:
            check_input_codebooks(replace(preset.lm, n_q=preset.codec.n_q, pattern=args.pattern))
        except ValueError as error:
            raise SystemExit(f"error: {error} (train.py --input-codebooks all)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.time()
    if not (Path(args.data) / "manifest.jsonl").exists():
        if args.data != "data/toy":
            raise SystemExit(f"error: {Path(args.data) / 'manifest.jsonl'} not found (see README: your own data)")
        print(f"building the toy dataset ({preset.n_clips} clips) in {args.data}")
        data.make_toy_dataset(args.data, n=preset.n_clips, seed=args.seed)
        timings["data"] = time.time() - started
    if args.stage in ("codec", "all"):
        t0 = time.time()
        train_codec(out, args.data, preset, seed=args.seed, device=device, resume=args.resume,
                    eval_every=args.eval_every)
        timings["codec"] = time.time() - t0
    if args.stage in ("lm", "all"):
        t0 = time.time()
        train_lm(out, args.data, preset, pattern=args.pattern, seed=args.seed, device=device,
                 resume=args.resume, eval_every=args.eval_every)
        timings["lm"] = time.time() - t0
        t0 = time.time()
        print(f"samples in {out / 'samples'}:")
        write_samples(out, args.data, seed=args.seed)
        timings["samples"] = time.time() - t0
    print("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {time.time() - started:.0f} s")
    print(f'generate more: python generate.py --run {out} --text "a cheerful fast tune on a plucked guitar" --out out.wav')


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted; the last checkpoint is loadable, continue with --resume")
