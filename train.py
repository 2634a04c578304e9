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
from dataclasses import dataclass, asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

import data
from conditioners import ConditionDropout, Tokenizer, word_dropout
from encodec import EncodecConfig, EncodecModel
from musicgen import LMConfig, MusicGen, MusicLM, load_lm, save_lm


@dataclass
class Preset:
    """Training budgets. `tiny` fits the 10-minute CPU budget; `long` trades time for quality."""
    n_clips: int = 1000           # toy clips generated when --data is missing (paper: 20k hours)
    codec_steps: int = 1500       # (EnCodec: 300k steps on GPUs)
    codec_batch: int = 16
    codec_lr: float = 1e-3
    lm_steps: int = 2000          # (paper: 1M steps)
    lm_batch: int = 16            # (paper: 192 × 30 s)
    lm_lr: float = 1e-3           # (paper: 1e-4 at D = 1024; tiny models take larger steps)
    lm_warmup: int = 100          # (paper: 4000)
    lm: LMConfig = None           # the LM's size (defaults to LMConfig())


PRESETS = {
    "tiny": Preset(lm=LMConfig()),
    "long": Preset(n_clips=2000, codec_steps=6000, lm_steps=10000, lm=LMConfig(dim=384, n_layers=6, n_heads=6,
                                                                                 ffn_dim=1536)),
}


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cosine_lr(step: int, max_steps: int, warmup: int, lr: float) -> float:
    """Linear warmup, then cosine decay to 10% (paper: cosine schedule with warmup)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ==== stage 2: the language model ======================================================================
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
             resume=False, eval_every=250):
    """Stage 2: train the LM of `preset` on codes of `out_dir/codec.pt`; writes `out_dir/lm.pt`.

    Returns a summary dict: held-out loss per codebook, seconds, tokens per second, steps.
    """
    # ---- setup ----
    torch.manual_seed(seed)
    device = torch.device(device)
    out = Path(out_dir)
    max_steps = preset.lm_steps if max_steps is None else max_steps
    codec, _ = EncodecModel.load(out / "codec.pt")
    codec = codec.to(device).eval()
    resume_path = out / "lm.pt"

    # ---- data: every clip encoded once by the frozen codec (§4.1), kept in memory as codes ----
    clips = data.load_clips(data_dir, codec.sample_rate)
    codes = encode_dataset(codec, clips, device)
    cfg = replace(preset.lm, n_q=codec.n_q, codebook_size=codec.codebook_size, frame_rate=codec.frame_rate,
                  sample_rate=codec.sample_rate, pattern=pattern)
    window = cfg.window_frames
    long_enough = [i for i, c in enumerate(codes) if c.shape[-1] >= window]
    if len(long_enough) < len(codes):
        print(f"note: {len(codes) - len(long_enough)} clips shorter than the {cfg.window_seconds} s window are skipped")
    train_ids = torch.tensor([i for i in long_enough if clips[i].split == "train"])
    valid_ids = torch.tensor([i for i in long_enough if clips[i].split != "train"])
    if len(train_ids) == 0:
        raise SystemExit(f"error: no training clip in {data_dir} is at least {cfg.window_seconds} s long")
    if len(valid_ids) == 0:
        valid_ids = train_ids[:preset.lm_batch]  # tiny user folders: validate on a few training clips
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
          f"vocabulary {len(tokenizer.vocab)} words, {len(train_ids)} train / {len(valid_ids)} held-out clips")

    # ---- optimizer: AdamW as the paper, (0.9, 0.95), weight decay 0.1 on matrices only ----
    optimizer = torch.optim.AdamW([{"params": [p for p in lm.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in lm.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=preset.lm_lr, betas=(0.9, 0.95))
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
                tqdm.write(f"step {step}: train loss {loss.item():.3f}, held-out loss {valid.mean():.3f} "
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
        data.write_audio(path, wav.cpu(), model.sample_rate)
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
                   help="tiny: ~10 min on a 2-core CPU; long: better quality, ~1 h")
    p.add_argument("--pattern", default="delay",
                   choices=["parallel", "delay", "partial-delay", "flatten", "partial-flatten", "vall-e"],
                   help="codebook interleaving pattern of the LM (paper §2.2; default delay)")
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
    preset = replace(preset, **overrides)
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
