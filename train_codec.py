"""Stage 1 of the recipe (paper §4.1, EnCodec §3): train the codec, which the LM stage then freezes.

Each step cuts random crops from the training clips, runs them through encoder, RVQ and decoder, and
minimises the reconstruction loss (losses.py; with `adversarial`, also the MS-STFT discriminator's
losses, discriminator.py) with Adam, betas (0.5, 0.9), as EnCodec. With `codec_quantizer_warmup` the
first steps train the autoencoder alone, then k-means initialises every codebook on its latents.

Under torchrun every process draws the same global batch plan and trains on its slice (ddp.py); the
RVQ keeps its codebooks equal across processes by itself (rvq.py); rank 0 alone logs, evaluates, saves.

Reads top to bottom like nanoGPT's train.py: `train_codec` first (setup, data, model, optimizer, the
schedule, the loop, no closure around it), then what it calls; the crop plans are data.py's.
Shape letters: B batch, N samples, K codebooks, T frames, D latent dimension.
Data flow: dataset files → crops read from disk (B, 1, N) → codec → codec.pt and codec_samples/*.wav.
"""
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
import ddp
from audio import load_audio, stack_wavs, write_audio
from discriminator import MSSTFTDiscriminator, discriminator_hinge_loss, feature_matching_loss, generator_adversarial_loss
from encodec import EncodecConfig
from losses import ReconstructionLoss
from metrics import codec_metrics
from rvq import perplexity
from spectral_codec import build_codec
from train_lm import cosine_lr


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
    codec = build_codec(cfg).to(device)
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
    valid, losses = None, []
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
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", mel=f"{mel.item():.3f}", n_q=codes.shape[1] if quantize else 0,
                            usage="/".join(f"{p:.0f}" for p in perplexity(codes, cfg.codebook_size)) if quantize
                            else "warm-up")
            if rank.main and ((step % eval_every == 0 and step > warmup_steps) or step == max_steps):
                valid, _ = codec_metrics(codec, valid_wav, per_n_q=True)
                codec.train()
                tqdm.write(f"step {step}: {valid_name.split()[0]} mel distance {valid['mel_distance']:.3f} "
                           f"(1..K codebooks: {' / '.join(f'{m:.3f}' for m in valid['mel_distance_per_n_q'])}), "
                           f"SI-SNR {valid['si_snr_db']:.1f} dB, chroma cosine {valid['chroma_cosine']:.2f}, perplexity "
                           f"{' / '.join(f'{p:.0f}' for p in valid['perplexity'])} of {cfg.codebook_size}")
                save(codec, ckpt_path, step, rank, optimizer, disc, disc_optimizer)
    except (KeyboardInterrupt, data.DataError):  # Ctrl-C, or a file that changed on disk: nothing is lost
        if rank.main:
            tqdm.write(f"stopped: saving the codec at step {step} to {ckpt_path} (continue with --resume)")
        save(codec, ckpt_path, step, rank, optimizer, disc, disc_optimizer)
        raise
    bar.close()
    save(codec, ckpt_path, step, rank, optimizer, disc, disc_optimizer)
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
    print(f"codec reconstructions in {samples}")
    return dict(valid, steps=step, seconds=seconds, losses=losses)


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


def save(codec, path, step, rank, optimizer, disc=None, disc_optimizer=None):
    """The checkpoint of the codec stage (rank 0 alone): weights, EMA codebooks, the optimizers' states."""
    if not rank.main:
        return
    extra = dict(optimizer=optimizer.state_dict())
    if disc is not None:
        extra.update(discriminator=disc.state_dict(), disc_optimizer=disc_optimizer.state_dict())
    codec.save(path, step=step, **extra)
