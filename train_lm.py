"""Stage 2 of the recipe (paper §4.1): the LM, trained on the frozen codec's codes.

Every clip is encoded once by the frozen codec and kept as codes. Each step draws random windows of
codes (B, K, T) with the aligned melody audio, builds the conditions (the text encoded, the chroma
extracted, condition dropout for guidance), and minimises the LM's cross-entropy (lm.py) with
AdamW, a warm-up + cosine learning rate and gradient clipping at 1, as the paper does.

Reads top to bottom like nanoGPT's train.py: setup, data, model, optimizer, eval, loop.
Shape letters: B batch, K codebooks, T frames, N samples, F chroma frames, L text tokens, D width.
Data flow: codec.pt + dataset clips → codes in memory → windows → MusicLM → lm.pt (train.py runs it).
"""
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

import data
from conditioners import ConditionDropout, Tokenizer, word_dropout
from encodec import EncodecModel
from lm import LMConfig, MusicLM, save_lm
from spectral_codec import load_codec


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


def train_lm(out_dir, data_dir, preset, pattern="delay", max_steps=None, seed=0, device="cpu",
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

    # ---- optimizer: AdamW as the paper (lm_optimizer) ----
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
            descriptions, chroma = condition_dropout(descriptions, chroma, generator, null_chroma=lm.null_chroma)
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
