"""Stage 1 of the recipe (paper §4.1, EnCodec §3): train the codec, which the LM stage then freezes.

Each step cuts random crops from the training clips, runs them through encoder, RVQ and decoder, and
minimises the reconstruction loss (losses.py; with `adversarial`, also the MS-STFT discriminator's
losses, discriminator.py) with Adam, betas (0.5, 0.9), as EnCodec. With `codec_quantizer_warmup` the
first steps train the autoencoder alone, then k-means initialises every codebook on its latents.

Reads top to bottom like nanoGPT's train.py: setup, data, model, optimizer, schedule, eval, loop.
Shape letters: B batch, N samples, K codebooks, T frames, D latent dimension.
Data flow: dataset clips → crops (B, 1, N) → codec → codec.pt and codec_samples/*.wav (train.py runs it).
"""
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
from audio import write_audio
from discriminator import MSSTFTDiscriminator, discriminator_hinge_loss, feature_matching_loss, generator_adversarial_loss
from encodec import EncodecConfig
from losses import ReconstructionLoss
from metrics import codec_metrics
from rvq import perplexity
from spectral_codec import build_codec
from train_lm import cosine_lr


def codec_batch(wavs, indices, crop, generator):
    """Random crops of `crop` samples from the clips `indices` (zero-padded if shorter): (B, 1, crop)."""
    batch = []
    for i in indices.tolist():
        wav = wavs[i]
        start = int(torch.randint(0, max(1, wav.shape[-1] - crop + 1), (1,), generator=generator))
        piece = wav[:, start:start + crop]
        batch.append(torch.nn.functional.pad(piece, (0, crop - piece.shape[-1])))
    return torch.stack(batch)


def train_codec(out_dir, data_dir, preset, max_steps=None, seed=0, device="cpu", resume=False,
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
