"""The two training stages of the recipe (paper §4.1): stage 1 trains the codec, stage 2 the LM on the
frozen codec's codes. train.py holds the recipe and calls them; each stage reads top to bottom like
nanoGPT's train.py (setup, data, model, optimizer, the loop, no closure around it), then what it calls.

Stage 1 (EnCodec §3). Each step cuts random crops from the training clips, runs them through encoder,
RVQ and decoder, and minimises the reconstruction loss (losses.py; with `adversarial`, also the MS-STFT
discriminator's) with Adam, betas (0.5, 0.9), as EnCodec. With `codec_quantizer_warmup` the first
steps train the autoencoder alone, then k-means initialises every codebook on its latents.

Stage 2. Every clip is encoded once by the frozen codec and its codes stored on disk (one memory-mapped
array per split, data.codes_array; under torchrun the ranks share the encoding). Each step draws random
windows of codes (B, K, T) with the chroma of the aligned melody audio (read from disk and extracted the
first time a window is drawn, data.CodeWindows), builds the conditions (the text encoded, condition
dropout for guidance), and minimises the LM's cross-entropy (lm.py) with AdamW, a warm-up + cosine
learning rate and gradient clipping at 1, as the paper does.

Both: under torchrun every process draws the same global batch plan and trains on its slice (ddp.py);
the RVQ keeps its codebooks equal across processes by itself (rvq.py); rank 0 alone logs, evaluates
and saves. The crop plans, windows and batch plans are data.py's.

Shape letters: B batch, N samples, K codebooks, T frames, D width, F chroma frames, L text tokens.
Data flow: dataset files → crops (B, 1, N) → codec → codec.pt; codec.pt + dataset files → codes/*.npy
on disk → windows → LMModel → lm.pt.
"""
import hashlib
import json
import math
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import ddp
import page
from audio import load_audio, stack_wavs, write_audio
from conditioners import ConditionDropout, Tokenizer, text_tokens, word_dropout
from encodec import EncodecConfig, EncodecModel, load_codec
from lm import LMConfig, LMModel, chroma_extractor, save_lm
from losses import (MSSTFTDiscriminator, ReconstructionLoss, discriminator_hinge_loss, feature_matching_loss,
                    generator_adversarial_loss)
from metrics import codec_metrics
from musicgen import MusicGen, encode_channels
from rvq import perplexity


# ---- the learning-rate schedule of both stages (§4.1) -----------------------------------------------
def cosine_lr(step: int, max_steps: int, warmup: int, lr: float) -> float:
    """Linear warmup, then cosine decay to 10% (paper: cosine schedule with warmup)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ==== Stage 1: the codec ==============================================================================
def train_codec(out_dir, data_dir, preset, max_steps=None, seed=0, device="cpu", resume=False,
                eval_every=500, n_valid=32, rank=ddp.Rank(), micro_batch=0, workers=0):
    """Stage 1: train the codec of `preset` on the clips of `data_dir`; writes `out_dir/codec.pt` and a
    few reconstructions in `out_dir/codec_samples/`. Returns a summary dict of held-out metrics (rank 0).
    `rank`: this process under torchrun (ddp.setup); `micro_batch`: crops per forward pass on a rank
    (gradient accumulation; 0 = the rank's whole share); `workers`: DataLoader processes reading audio."""
    # ---- setup ----
    torch.manual_seed(seed)
    device = rank.device if rank.world > 1 else torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "codec.pt"
    max_steps = preset.codec_steps if max_steps is None else max_steps
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True) if resume and ckpt_path.exists() else None
    cfg = EncodecConfig(**ckpt["config"]) if ckpt is not None else preset.codec
    log = print if rank.main else (lambda *a, **k: None)

    # ---- data: the manifest and the files' lengths; crops are read from disk when a step needs them ----
    entries = data.load_manifest(data_dir)
    train_paths = [e["path"] for e in entries if e["split"] == "train"]
    if not train_paths:
        raise SystemExit(f"error: no training clip in {data_dir}")
    lengths = data.clip_lengths(data_dir, train_paths, cfg.sample_rate)
    valid_paths = [e["path"] for e in entries if e["split"] != "train"][:n_valid]
    valid_name = "held-out"
    if not valid_paths:  # a small user folder: say so rather than call training clips held-out
        valid_paths, valid_name = train_paths[:n_valid], "training (no held-out clips)"
    valid_wavs = [load_audio(Path(data_dir) / p, cfg.sample_rate) for p in valid_paths] if rank.main else []
    valid_wav = stack_wavs(valid_wavs, min(w.shape[-1] for w in valid_wavs)) if rank.main else None  # (B, 1, N)
    crop = max(1, round(preset.codec_crop_seconds * cfg.frame_rate)) * cfg.hop_length
    windows = data.Windows(data_dir, cfg.sample_rate)

    # ---- model, losses, optimizers (EnCodec: Adam, betas (0.5, 0.9)) ----
    codec = EncodecModel(cfg).to(device)
    reconstruction_loss = ReconstructionLoss(cfg).to(device)
    optimizer = torch.optim.Adam(codec.parameters(), lr=preset.codec_lr, betas=(0.5, 0.9))
    disc = disc_optimizer = None
    if cfg.adversarial:
        disc = MSSTFTDiscriminator(cfg.disc_scales, cfg.disc_filters).to(device)
        disc_optimizer = torch.optim.Adam(disc.parameters(), lr=preset.codec_lr, betas=(0.5, 0.9))
    log(f"codec: {sum(p.numel() for p in codec.parameters()) / 1e6:.2f}M parameters, hop {cfg.hop_length} "
        f"({cfg.frame_rate:g} Hz), {cfg.n_q} × {cfg.codebook_size} codes = "
        f"{codec.quantizer.bitrate(cfg.frame_rate) / 1000:.2f} kbps, adversarial {'on' if disc else 'off'}, "
        f"{len(train_paths)} train / {len(valid_paths)} {valid_name} clips, {rank.world} process(es)")
    step = 0
    warmup_steps = round(preset.codec_quantizer_warmup * max_steps)

    if ckpt is not None:  # weights (incl. the EMA codebooks) and optimizers; step s's batch depends on s alone
        codec.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if disc is not None:
            disc.load_state_dict(ckpt["discriminator"])
            disc_optimizer.load_state_dict(ckpt["disc_optimizer"])
        step = ckpt["step"]
        log(f"resumed the codec from {ckpt_path} at step {step}")
    # Under torchrun, DDP averages the gradients of the ranks' slices (ddp.wrap; one process: the model).
    model = ddp.wrap(codec, rank)
    disc_model = ddp.wrap(DiscriminatorStep(disc), rank) if disc is not None else None

    # ---- the batches: step s reads the slice of the global plan drawn from (seed, s) ----
    plans = (ddp.shard(data.crop_plan(train_paths, lengths, preset.codec_batch, crop, ddp.step_generator(seed, s)),
                       rank)
             for s in range(step, max_steps))
    batches = iter(data.plan_loader(windows, plans, workers))

    # ---- loop ----
    codec.train()
    bar = tqdm(total=max_steps, initial=step, desc="codec", dynamic_ncols=True, disable=not rank.main)
    started = time.time()
    valid, losses, curve = None, [], []  # curve: [step, loss, mel term, codes in use per level] for the page
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
            ddp.seed_step(seed, step)  # the same on every rank: the RVQ's draws must agree
            if step == warmup_steps:
                # The end of the quantizer warm-up (or step 0 without one): k-means on 64 one-second crops.
                plan = data.crop_plan(train_paths, lengths, 64, cfg.hop_length * round(cfg.frame_rate),
                                      ddp.step_generator(seed, warmup_steps, stream=1))
                init_codebooks(codec, [windows[item] for item in plan], preset.codec_batch * crop // cfg.hop_length)
            share = next(batches).to(device)  # (B / ranks, 1, crop)
            quantize = step >= warmup_steps
            pieces = ddp.micro_batches(share, micro_batch)
            loss_sum = mel_sum = 0.0
            recons = []
            for j, wav in enumerate(pieces):
                # Gradients add up over the micro-batches; DDP averages them over the ranks on the last one.
                sync = ddp.sync_gradients(model, last=j == len(pieces) - 1)
                with sync:
                    recon, codes, commitment = model(wav, quantize=quantize)  # (b, 1, crop), (b, k, T)
                    loss, mel = reconstruction_loss(wav, recon, commitment)
                    if disc is not None:
                        # Generator side: fool every scale of the discriminator, match its features on real
                        # audio. The discriminator's own weights take no gradient from this side.
                        disc.requires_grad_(False)
                        real_outputs, fake_outputs = disc(wav), disc(recon)
                        disc.requires_grad_(True)
                        loss = loss + cfg.adversarial_weight * generator_adversarial_loss(fake_outputs) \
                            + cfg.feature_weight * feature_matching_loss(real_outputs, fake_outputs)
                    (loss * len(wav) / len(share)).backward()
                loss_sum, mel_sum = loss_sum + loss.detach() * len(wav) / len(share), mel_sum + mel.detach() * len(wav) / len(share)
                recons.append(recon.detach())
            # Gradient clipping (tiny recipe; EnCodec has none, DAC clips): one spike at the peak lr can
            # throw the spectral decoder's log-magnitudes past their clamp, where no gradient comes back.
            if preset.codec_grad_clip:
                torch.nn.utils.clip_grad_norm_(codec.parameters(), preset.codec_grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if disc is not None:
                # Discriminator side: hinge loss on real vs (detached) reconstructions.
                for j, (wav, recon) in enumerate(zip(pieces, recons)):
                    sync = ddp.sync_gradients(disc_model, last=j == len(pieces) - 1)
                    with sync:
                        (disc_model(wav, recon) * len(wav) / len(share)).backward()
                disc_optimizer.step()
                disc_optimizer.zero_grad(set_to_none=True)
            step += 1
            loss, mel = ddp.mean_over_ranks(loss_sum, rank), ddp.mean_over_ranks(mel_sum, rank)
            losses.append(loss.item())
            usage = perplexity(codes, cfg.codebook_size) if quantize else None
            if rank.main:
                curve.append([step, loss.item(), mel.item(), usage])
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", mel=f"{mel.item():.3f}", n_q=codes.shape[1] if quantize else 0,
                            usage="/".join(f"{p:.0f}" for p in usage) if quantize else "warm-up")
            evaluation = None
            if rank.main and ((step % eval_every == 0 and step > warmup_steps) or step == max_steps):
                valid, _ = codec_metrics(codec, valid_wav, per_n_q=True)
                codec.train()
                tqdm.write(f"step {step}: {valid_name.split()[0]} mel distance {valid['mel_distance']:.3f} "
                           f"(1..K codebooks: {' / '.join(f'{m:.3f}' for m in valid['mel_distance_per_n_q'])}), "
                           f"SI-SNR {valid['si_snr_db']:.1f} dB, chroma cosine {valid['chroma_cosine']:.2f}, perplexity "
                           f"{' / '.join(f'{p:.0f}' for p in valid['perplexity'])} of {cfg.codebook_size}")
                save_codec(codec, ckpt_path, step, rank, optimizer, disc, disc_optimizer)
                evaluation = dict(step=step, mel_distance=valid["mel_distance"])
            if rank.main and (step % eval_every == 0 or step == max_steps):  # the training page (page.py)
                page.record(out, "codec", curve, evaluation, codebook_size=cfg.codebook_size)
                curve = []
    except (KeyboardInterrupt, data.DataError):  # Ctrl-C, or a file that changed on disk: nothing is lost
        if rank.main:
            tqdm.write(f"stopped: saving the codec at step {step} to {ckpt_path} (continue with --resume)")
        save_codec(codec, ckpt_path, step, rank, optimizer, disc, disc_optimizer)
        raise
    bar.close()
    save_codec(codec, ckpt_path, step, rank, optimizer, disc, disc_optimizer)
    seconds = time.time() - started
    if not rank.main:
        return dict(steps=step, seconds=seconds, losses=losses)
    valid, recon = codec_metrics(codec, valid_wav, per_n_q=True)
    # A few reconstructions to listen to, next to the checkpoint.
    samples = out / "codec_samples"
    samples.mkdir(exist_ok=True)
    for i in range(min(3, len(valid_wavs))):
        write_audio(samples / f"{i}_original.wav", valid_wavs[i], cfg.sample_rate)
        write_audio(samples / f"{i}_reconstruction.wav", recon[i], cfg.sample_rate)
    page.reconstructions(out, valid_wavs[:3], recon[:3], cfg.sample_rate)
    print(f"codec reconstructions in {samples}")
    return dict(valid, steps=step, seconds=seconds, losses=losses)


# ---- what stage 1 calls ------------------------------------------------------------------------------
class DiscriminatorStep(torch.nn.Module):
    """The discriminator's hinge loss on real vs reconstructed audio as one module call, so that DDP
    (which syncs gradients of what a wrapped module's forward computed) sees both of its passes."""

    def __init__(self, disc):
        super().__init__()
        self.disc = disc

    def forward(self, wav, recon):
        return discriminator_hinge_loss(self.disc(wav), self.disc(recon))


def init_codebooks(codec, crops, vectors_per_batch):
    """k-means initialisation of every codebook on the encoder's latents of `crops` (each (1, N)): 64
    one-second crops give 3200 vectors at 50 Hz, where a training batch of short crops has fewer vectors
    than a codebook has entries. Every rank reads the same crops and computes the same codebooks."""
    device = next(codec.parameters()).device
    with torch.no_grad():
        z = codec.encoder(torch.stack(crops).to(device))  # (64, 1, N) -> (64, D, T)
    codec.quantizer.init_codebooks(z, vectors_per_batch=vectors_per_batch)


def save_codec(codec, path, step, rank, optimizer, disc=None, disc_optimizer=None):
    """The checkpoint of the codec stage (rank 0 alone): weights, EMA codebooks, the optimizers' states."""
    if not rank.main:
        return
    extra = dict(optimizer=optimizer.state_dict())
    if disc is not None:
        extra.update(discriminator=disc.state_dict(), disc_optimizer=disc_optimizer.state_dict())
    codec.save(path, step=step, **extra)


# ==== Stage 2: the LM on the frozen codec's codes ====================================================
def train_lm(out_dir, data_dir, preset, max_steps=None, seed=0, device="cpu",
             resume=False, eval_every=250, codes_dir=None, rank=ddp.Rank(), micro_batch=0, workers=0,
             n_valid=256, compile=False, snapshots=(), finetune=None, checkpoint_activations=False):
    """Stage 2: train the LM of `preset` on codes of `out_dir/codec.pt`; writes `out_dir/lm.pt`.
    `codes_dir` (default out_dir/codes) holds the encoded dataset; several runs on one codec can share
    it (the pattern ablation trains six LMs on the same codes). `rank`, `micro_batch`, `workers`: as
    train_codec's; `compile`: torch.compile the LM (opt-in; for GPUs); `snapshots`: fractions of the stage
    at which fixed prompts are generated for the training page (train.py: page.SNAPSHOTS).
    `finetune` (published/finetune.py's FineTune, train.py --init-from): start from a published MusicGen
    instead, its EnCodec and T5 frozen, the LM (or LoRA's adapters) trained; `checkpoint_activations`:
    recompute each decoder block in backward instead of storing its activations (memory for compute).

    Returns a summary dict: held-out loss per codebook, seconds, tokens per second, steps (rank 0).
    """
    # ---- setup ----
    torch.manual_seed(seed)
    device = rank.device if rank.world > 1 else torch.device(device)
    out = Path(out_dir)
    max_steps = preset.lm_steps if max_steps is None else max_steps
    if finetune is None:  # from scratch: the codec of stage 1
        codec, _ = load_codec(out / "codec.pt")
        cfg = lm_config_for(codec, preset.lm)
    else:  # from a published MusicGen: its EnCodec, T5 and LM (with LoRA: its adapters), the LM's training fields ours
        codec, lm, tokenizer = finetune.load_base()
        cfg = lm.cfg
    codec = codec.to(device).eval()
    resume_path = out / "lm.pt"
    log = print if rank.main else (lambda *a, **k: None)

    # ---- data: every clip encoded once by the frozen codec (§4.1), the codes kept on disk ----
    entries = data.load_manifest(data_dir)
    folder = Path(codes_dir) if codes_dir is not None else out / "codes"
    # A published codec's clips are long (30 s at 32 kHz): one at a time, so a batch never pads them.
    index = encode_dataset(codec, data_dir, entries, folder, rank, channels=cfg.audio_channels,
                           batch_size=32 if finetune is None else 1)
    window = cfg.window_frames
    splits, extractor = {}, chroma_extractor(cfg)  # the LM's melody chroma, computed by the loader (once a window)
    for split in ("train", "heldout"):
        ids, offsets = index[split]["entries"], index[split]["offsets"]
        frames = np.diff(offsets).tolist()
        melody = [entries[i]["attributes"].get("melody_path", entries[i]["path"]) for i in ids]
        splits[split] = dict(frames=frames, descriptions=[entries[i]["description"] for i in ids],
                             pool=torch.tensor([j for j, f in enumerate(frames) if f >= window], dtype=torch.long),
                             windows=data.CodeWindows(folder, split, data_dir, melody, codec.sample_rate,
                                                      codec.hop_length, window, chroma=extractor))
    short = sum(len(s["frames"]) - len(s["pool"]) for s in splits.values())
    if short:
        log(f"warning: {short} clips shorter than the {cfg.window_seconds:g} s window are skipped "
            f"(--lm.window_seconds sets the window)")
    train, valid_split, valid_name = splits["train"], splits["heldout"], "held-out"
    if len(train["pool"]) == 0:
        raise SystemExit(f"error: no training clip in {data_dir} is at least {cfg.window_seconds} s long")
    if len(valid_split["pool"]) == 0:  # a small user folder: say so rather than call training clips held-out
        valid_split, valid_name = train, "training (no held-out clips)"
    valid_pool = valid_split["pool"][:n_valid if valid_split is not train else preset.lm_batch]
    # Resuming restores the weights, the optimizer moments and the vocabulary; step s's batch and
    # dropout draws depend on (seed, s) alone, so the next step's loss equals the uninterrupted run's.
    ckpt = torch.load(resume_path, map_location="cpu", weights_only=True) if resume and resume_path.exists() else None
    if finetune is None and ckpt is not None:
        tokenizer, cfg = Tokenizer(ckpt["vocab"]), LMConfig(**ckpt["config"])
    elif finetune is None:  # (a fine-tune has T5's tokenizer, from the published folder)
        tokenizer = Tokenizer.build([train["descriptions"][j] for j in train["pool"].tolist()])
        cfg = replace(cfg, text_vocab_size=len(tokenizer.vocab))
    # CFG dropout (null condition for all) and melody attribute dropout, §2.4 / §3.
    condition_dropout = ConditionDropout(cfg.cfg_dropout, cfg.melody_dropout)

    # ---- model: a new LM (a fine-tune's is the published one, loaded above) ----
    if finetune is None:
        lm = LMModel(cfg)
    lm = lm.to(device)
    lm.transformer.checkpoint_activations = checkpoint_activations
    n_params = sum(p.numel() for p in lm.parameters())
    n_trained = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    log(f"LM: {n_params / 1e6:.2f}M parameters ({n_trained / 1e6:.3g}M trained), pattern {cfg.pattern}, window "
        f"{window} frames, text: {'T5' if finetune else f'{len(tokenizer.vocab)} words'}, {len(train['pool'])} "
        f"train / {len(valid_pool)} {valid_name} clips, {rank.world} process(es)")

    # ---- optimizer: AdamW as the paper (lm_optimizer) ----
    optimizer = lm_optimizer(lm, preset.lm_lr)
    step = 0
    if ckpt is not None:
        if "heads.weight" in ckpt["model"]:
            raise SystemExit(f"error: {resume_path} was written by an older lm.py (stacked tables and heads): "
                             "generate.py and evaluate.py read it, a resume needs a new LM run")
        if finetune is None:
            lm.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        else:  # the trained tensors of lm.pt, the optimizer's state of optimizer.pt (published/finetune.py)
            optimizer.load_state_dict(finetune.resume(ckpt, lm, resume_path))
        step = ckpt["step"]
        log(f"resumed the LM from {resume_path} at step {step}")
    # On a GPU the LM runs in bfloat16 autocast (matrix products in bf16, the softmax and the loss in
    # float32 by autocast's own rules); on a CPU in float32.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    objective = Objective(lm)
    model = ddp.wrap(torch.compile(objective) if compile else objective, rank, find_unused=True)

    # ---- the batches: step s reads the slice of the global plan drawn from (seed, s) ----
    plans = (data.window_plan(train["frames"], train["pool"], preset.lm_batch, window, ddp.step_generator(seed, s))
             for s in range(step, max_steps))
    batches = iter(data.plan_loader(train["windows"], (ddp.shard(plan, rank) for plan in plans), workers))

    # ---- the training page's samples: the same prompts at fixed fractions of the stage (page.py) ----
    snapshot_steps = {max(1, round(f * max_steps)) for f in snapshots}
    prompts = page_prompts(data_dir, codec.sample_rate) if rank.main and snapshot_steps else None

    # ---- loop ----
    lm.train()
    bar = tqdm(total=max_steps, initial=step, desc="lm", dynamic_ncols=True, disable=not rank.main)
    tokens_seen, started, step_seconds = 0, time.time(), []
    valid, losses, curve = None, [], []  # curve: [step, loss, cross-entropy per codebook] for the page
    try:
        while step < max_steps:
            began = time.perf_counter()
            # lr schedule: warmup + cosine (paper §4.1)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, max_steps, preset.lm_warmup, preset.lm_lr)
            ddp.seed_step(seed, step, rank.index)  # model dropout: rank 0 draws as one process would
            # The whole global batch's conditions and dropout draws, then this rank's slice of them.
            generator = ddp.step_generator(seed, step, stream=1)
            plan = data.window_plan(train["frames"], train["pool"], preset.lm_batch, window,
                                    ddp.step_generator(seed, step))  # the plan the loader reads for this step
            descriptions = word_dropout([train["descriptions"][i] for i, _ in plan], cfg.word_dropout, generator)
            null, drop_melody = condition_dropout.draw(len(descriptions), generator)
            descriptions, null, drop_melody = (ddp.shard(x, rank) for x in (descriptions, null, drop_melody))
            batch_codes, chroma = next(batches)  # (B / ranks, K, T), (B / ranks, F, 12)
            pieces = ddp.micro_batches(list(range(len(descriptions))), micro_batch)
            loss_sum, per_codebook_sum = 0.0, 0.0
            for j, piece in enumerate(pieces):
                # Gradients add up over the micro-batches; DDP averages them over the ranks on the last one.
                sync = ddp.sync_gradients(model, last=j == len(pieces) - 1)
                ids, mask, piece_chroma = batch_conditions(lm, tokenizer, [descriptions[i] for i in piece], chroma[piece],
                                                           condition_dropout, (null[piece], drop_melody[piece]))
                with sync, autocast:
                    loss, per_codebook = model(batch_codes[piece].to(device), ids, mask, piece_chroma)
                    (loss * len(piece) / len(descriptions)).backward()
                loss_sum = loss_sum + loss.detach().float() * len(piece) / len(descriptions)
                per_codebook_sum = per_codebook_sum + per_codebook.float() * len(piece) / len(descriptions)
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)  # paper: gradient clipping at 1
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_seconds.append(time.perf_counter() - began)
            loss, per_codebook = ddp.mean_over_ranks(loss_sum, rank), ddp.mean_over_ranks(per_codebook_sum, rank)
            tokens_seen += batch_codes.numel() * rank.world
            losses.append(loss.item())
            if rank.main:
                curve.append([step, loss.item(), per_codebook.tolist()])
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", per_k="/".join(f"{x:.2f}" for x in per_codebook.tolist()),
                            tok_s=f"{tokens_seen / (time.time() - started):.0f}")
            if rank.main and (step % eval_every == 0 or step == max_steps):
                valid = evaluate_lm(objective, tokenizer, valid_split, valid_pool, window, preset.lm_batch, autocast)
                # Plain cross-entropies on both sides (the objective also weighs the first frames, see
                # LMModel.compute_loss), so that train and held-out losses can be compared.
                tqdm.write(f"step {step}: train loss {per_codebook.mean():.3f} (objective {loss.item():.3f}), "
                           f"{valid_name.split()[0]} loss {valid.mean():.3f} "
                           f"per codebook {[round(x, 3) for x in valid.tolist()]} "
                           f"(chance: ln {cfg.codebook_size} = {math.log(cfg.codebook_size):.2f})")
                save_lm_stage(resume_path, lm, tokenizer, step, optimizer, finetune)  # rank 0 alone saves
                page.record(out, "lm", curve, dict(step=step, heldout=valid.tolist()), codebook_size=cfg.codebook_size,
                            tokens_per_second=tokens_seen / (time.time() - started))
                curve = []
            if rank.main and step in snapshot_steps:  # samples along the way; the next step reseeds
                page.record(out, "lm", curve, codebook_size=cfg.codebook_size)
                curve = []
                page.snapshot(out, step, max_steps, MusicGen(codec, lm, tokenizer), prompts)
                lm.train()
    except (KeyboardInterrupt, data.DataError):  # Ctrl-C, or a file that changed on disk: nothing is lost
        if rank.main:
            tqdm.write(f"stopped: saving the LM at step {step} to {resume_path} (continue with --resume)")
            save_lm_stage(resume_path, lm, tokenizer, step, optimizer, finetune)
        raise
    bar.close()
    if rank.main and finetune is not None and finetune.merge:  # --merge: lm.pt the merged weights, no optimizer
        save_lm_stage(resume_path, finetune.merged(lm), tokenizer, step, None, finetune)
    elif rank.main:
        save_lm_stage(resume_path, lm, tokenizer, step, optimizer, finetune)
    seconds = time.time() - started
    seconds_per_step = float(np.median(step_seconds)) if step_seconds else 0.0
    log(f"lm: {len(step_seconds)} steps, {seconds_per_step:.3g} s a step (median), peak memory "
        f"{peak_memory_gb(device):.2f} GB")
    if not rank.main:
        return dict(steps=step, seconds=seconds, losses=losses)
    if valid is None:
        valid = evaluate_lm(objective, tokenizer, valid_split, valid_pool, window, preset.lm_batch, autocast)
    return dict(valid_loss_per_codebook=valid.tolist(), valid_loss=float(valid.mean()), steps=step,
                seconds=seconds, losses=losses, tokens_per_second=tokens_seen / max(seconds, 1e-9),
                seconds_per_step=seconds_per_step)


def peak_memory_gb(device) -> float:
    """The process's peak resident memory (Linux: VmHWM; nan elsewhere), or on CUDA the most the
    allocator held."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    status = Path("/proc/self/status")
    peak = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:")] \
        if status.exists() else []
    return int(peak[0]) * 1024 / 1e9 if peak else float("nan")  # kB -> GB


# ---- what stage 2 calls ------------------------------------------------------------------------------
def save_lm_stage(path, lm, tokenizer, step, optimizer, finetune):
    """lm.pt of a run from scratch (lm.save_lm: every weight and the vocabulary), or of a fine-tune
    (published/finetune.py: the trained tensors and a pointer to the published folder)."""
    if finetune is None:
        save_lm(path, lm, tokenizer, step=step, optimizer=optimizer)
    else:
        finetune.save(path, lm, step, optimizer)


def page_prompts(data_dir, sample_rate) -> dict:
    """The training page's fixed prompts: two held-out descriptions and the first one's melody."""
    clips = (data.load_clips(data_dir, sample_rate, split="heldout", limit=2)
             or data.load_clips(data_dir, sample_rate, limit=2))
    melody = clips[0].melody_wav if clips[0].melody_wav is not None else clips[0].wav
    return dict(descriptions=[c.description for c in clips], melody=melody,
                melody_description=clips[-1].description)


def batch_conditions(lm, tokenizer, descriptions, chroma, condition_dropout=None, dropped=None):
    """Descriptions + the melody's chroma (B, F, 12) → token ids (B, L), mask (B, L), chroma (B, F, 12) on
    the LM's device; with `dropped` (this rank's slice of the condition-dropout draws) the dropped
    conditions are nulled."""
    device = lm.null_chroma.device
    chroma = chroma.to(device)
    if dropped is not None:
        descriptions, chroma = condition_dropout(descriptions, chroma, null_chroma=lm.null_chroma, dropped=dropped)
    ids, mask = text_tokens(tokenizer, descriptions)
    return ids.to(device), mask.to(device), chroma


@torch.no_grad()
def evaluate_lm(objective, tokenizer, split, pool, window, batch_size, autocast=nullcontext()):
    """Held-out loss per codebook (the paper reports NLL / perplexity in Table 3), rank 0: one window
    per clip of `pool`, the same windows at every evaluation (a generator of their own). -> (K,), CPU."""
    lm = objective.lm
    lm.eval()
    generator = torch.Generator().manual_seed(1234)
    plan = [(i, int(torch.randint(0, split["frames"][i] - window + 1, (1,), generator=generator)))
            for i in pool.tolist()]
    total, count = torch.zeros(lm.cfg.n_q), 0
    for start in range(0, len(plan), batch_size):
        items = plan[start:start + batch_size]
        batch_codes, chroma = (torch.stack(x) for x in zip(*(split["windows"][item] for item in items)))
        ids, mask, chroma = batch_conditions(lm, tokenizer, [split["descriptions"][i] for i, _ in items], chroma)
        with autocast:
            _, per_codebook = objective(batch_codes.to(lm.null_chroma.device), ids, mask, chroma)
        total += per_codebook.float().cpu() * len(items)
        count += len(items)
    lm.train()
    return total / count


def lm_optimizer(lm, lr: float) -> torch.optim.AdamW:
    """AdamW as the paper (betas 0.9, 0.95; weight decay 0.1), the decay on matrices only: shrinking
    LayerNorm gains and biases towards 0 is not regularisation."""
    trained = [p for p in lm.parameters() if p.requires_grad]  # a fine-tune's frozen T5 (and base) excluded
    return torch.optim.AdamW([{"params": [p for p in trained if p.dim() >= 2], "weight_decay": 0.1},
                              {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def lm_config_for(codec: EncodecModel, lm_cfg: LMConfig, **changes) -> LMConfig:
    """The LM's token streams come from the codec (n_q, codebook_size, frame_rate, sample_rate): copy
    them instead of configuring them twice, so the two can never disagree."""
    return replace(lm_cfg, n_q=codec.n_q, codebook_size=codec.codebook_size, frame_rate=codec.frame_rate,
                   sample_rate=codec.sample_rate, **changes)


def encode_dataset(codec: EncodecModel, data_dir, entries, folder, rank=ddp.Rank(), batch_size=32, channels=1):
    """Encode every clip once with the frozen codec (§4.1) into `folder`: per split, an int16 array
    (K·C, total frames) and the clips' offsets in index.json (C = `channels`: a stereo LM reads each
    channel's K streams, coded by the mono codec, level by level: musicgen.encode_channels). The clips are sorted by length and cut into
    batches of `batch_size` that do not depend on the number of ranks (rank r encodes batches r, r + N,
    ...), so the codes are the same under any N. Skipped when index.json says this codec and manifest
    were already encoded. Returns the index."""
    folder = Path(folder)
    key = hashlib.sha1(repr([(e["path"], e["split"]) for e in entries] + [channels]).encode()
                       + b"".join(v.cpu().numpy().tobytes() for v in codec.state_dict().values())).hexdigest()
    old = json.loads((folder / "index.json").read_text()) if (folder / "index.json").exists() else {}
    if old.get("key") == key:
        return old
    folder.mkdir(parents=True, exist_ok=True)
    ddp.barrier(rank)  # every rank has read the old index before rank 0 removes it
    if rank.main:
        (folder / "index.json").unlink(missing_ok=True)  # no index until the arrays are complete
    index = dict(key=key)
    for split in ("train", "heldout"):
        ids = [i for i, e in enumerate(entries) if e["split"] == split]
        lengths = data.clip_lengths(data_dir, [entries[i]["path"] for i in ids], codec.sample_rate)
        frames = [math.ceil(n / codec.hop_length) for n in lengths]
        offsets = np.concatenate([[0], np.cumsum(frames)]).tolist()
        index[split] = dict(entries=ids, offsets=offsets)
        if rank.main:
            data.codes_array(folder, split, shape=(codec.n_q * channels, offsets[-1]))
        ddp.barrier(rank)
        array = data.codes_array(folder, split)
        order = sorted(range(len(ids)), key=lambda j: (lengths[j], j))  # similar lengths batched together
        batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)][rank.index::rank.world]
        for batch in tqdm(batches, desc=f"encode {split}", leave=False, disable=not rank.main):
            wavs = [load_audio(Path(data_dir) / entries[ids[j]]["path"], codec.sample_rate, channels) for j in batch]
            wav = stack_wavs(wavs)  # (B, C, N), zero-padded to the longest
            with torch.no_grad():
                codes = encode_channels(codec, wav.to(codec_device(codec))).cpu()  # (B, C, N) -> (B, K·C, T)
            for j, clip_codes in zip(batch, codes):
                array[:, offsets[j]:offsets[j + 1]] = clip_codes[:, :frames[j]].numpy()
        array.flush()
        del array
    ddp.barrier(rank)
    if rank.main:  # index.json last: its key says the arrays are complete
        data.write_json_atomic(folder / "index.json", index)
    ddp.barrier(rank)
    return index


def codec_device(codec):
    return next(codec.parameters()).device


class Objective(torch.nn.Module):
    """The LM's training loss as one module call, text encoder included, so that DDP (which syncs the
    gradients of what a wrapped module's forward computed) sees every parameter it trains."""

    def __init__(self, lm: LMModel):
        super().__init__()
        self.lm = lm

    def forward(self, codes, ids, mask, chroma):
        text, text_mask = self.lm.encode_text(ids, mask)  # (B, L) -> (B, L, D), (B, L)
        return self.lm.compute_loss(codes, text, text_mask, chroma)
