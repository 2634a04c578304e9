"""Stage 2 of the recipe (paper §4.1): the LM, trained on the frozen codec's codes.

Every clip is encoded once by the frozen codec and its codes stored on disk (one memory-mapped array
per split, data.codes_array; under torchrun the ranks share the encoding). Each step draws random
windows of codes (B, K, T) with the aligned melody audio read from disk, builds the conditions (the text
encoded, the chroma extracted, condition dropout for guidance), and minimises the LM's cross-entropy
(lm.py) with AdamW, a warm-up + cosine learning rate and gradient clipping at 1, as the paper does.
Under torchrun every process draws the same global batch plan and trains on its slice (ddp.py).

Reads top to bottom like nanoGPT's train.py: `train_lm` first (setup, data, model, optimizer, the loop,
no closure around it), then what it calls; the windows and batch plans are data.py's.
Shape letters: B batch, K codebooks, T frames, N samples, F chroma frames, L text tokens, D width.
Data flow: codec.pt + dataset files → codes/*.npy on disk → windows → LMModel → lm.pt (train.py runs it).
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
from audio import load_audio, stack_wavs
from conditioners import ConditionDropout, Tokenizer, word_dropout
from encodec import EncodecModel
from lm import LMConfig, LMModel, save_lm
from spectral_codec import load_codec


def train_lm(out_dir, data_dir, preset, pattern="delay", max_steps=None, seed=0, device="cpu",
             resume=False, eval_every=250, codes_dir=None, rank=ddp.Rank(), micro_batch=0, workers=0,
             n_valid=256, compile=False):
    """Stage 2: train the LM of `preset` on codes of `out_dir/codec.pt`; writes `out_dir/lm.pt`.
    `codes_dir` (default out_dir/codes) holds the encoded dataset; several runs on one codec can share
    it (the pattern ablation trains six LMs on the same codes). `rank`, `micro_batch`, `workers`: as
    train_codec's; `compile`: torch.compile the LM (opt-in; for GPUs).

    Returns a summary dict: held-out loss per codebook, seconds, tokens per second, steps (rank 0).
    """
    # ---- setup ----
    torch.manual_seed(seed)
    device = rank.device if rank.world > 1 else torch.device(device)
    out = Path(out_dir)
    max_steps = preset.lm_steps if max_steps is None else max_steps
    codec, _ = load_codec(out / "codec.pt")
    codec = codec.to(device).eval()
    resume_path = out / "lm.pt"
    log = print if rank.main else (lambda *a, **k: None)

    # ---- data: every clip encoded once by the frozen codec (§4.1), the codes kept on disk ----
    entries = data.load_manifest(data_dir)
    folder = Path(codes_dir) if codes_dir is not None else out / "codes"
    index = encode_dataset(codec, data_dir, entries, folder, rank)
    cfg = lm_config_for(codec, preset.lm, pattern=pattern)
    window = cfg.window_frames
    splits = {}
    for split in ("train", "heldout"):
        ids, offsets = index[split]["entries"], index[split]["offsets"]
        frames = np.diff(offsets).tolist()
        melody = [entries[i]["attributes"].get("melody_path", entries[i]["path"]) for i in ids]
        splits[split] = dict(frames=frames, descriptions=[entries[i]["description"] for i in ids],
                             pool=torch.tensor([j for j, f in enumerate(frames) if f >= window], dtype=torch.long),
                             windows=data.CodeWindows(folder, split, data_dir, melody, codec.sample_rate,
                                                 codec.hop_length, window))
    short = sum(len(s["frames"]) - len(s["pool"]) for s in splits.values())
    if short:
        log(f"note: {short} clips shorter than the {cfg.window_seconds} s window are skipped")
    train, valid_split, valid_name = splits["train"], splits["heldout"], "held-out"
    if len(train["pool"]) == 0:
        raise SystemExit(f"error: no training clip in {data_dir} is at least {cfg.window_seconds} s long")
    if len(valid_split["pool"]) == 0:  # a small user folder: say so rather than call training clips held-out
        valid_split, valid_name = train, "training (no held-out clips)"
    valid_pool = valid_split["pool"][:n_valid if valid_split is not train else preset.lm_batch]
    # Resuming restores the weights, the optimizer moments and the vocabulary; step s's batch and
    # dropout draws depend on (seed, s) alone, so the next step's loss equals the uninterrupted run's.
    ckpt = torch.load(resume_path, map_location="cpu", weights_only=True) if resume and resume_path.exists() else None
    if ckpt is not None:
        tokenizer, cfg = Tokenizer(ckpt["vocab"]), LMConfig(**ckpt["config"])
    else:
        tokenizer = Tokenizer.build([train["descriptions"][j] for j in train["pool"].tolist()])
        cfg = replace(cfg, text_vocab_size=len(tokenizer.vocab))
    # CFG dropout (null condition for all) and melody attribute dropout, §2.4 / §3.
    condition_dropout = ConditionDropout(cfg.cfg_dropout, cfg.melody_dropout)

    # ---- model ----
    lm = LMModel(cfg).to(device)
    n_params = sum(p.numel() for p in lm.parameters())
    log(f"LM: {n_params / 1e6:.2f}M parameters, pattern {cfg.pattern}, window {window} frames, "
        f"vocabulary {len(tokenizer.vocab)} words, {len(train['pool'])} train / {len(valid_pool)} {valid_name} "
        f"clips, {rank.world} process(es)")

    # ---- optimizer: AdamW as the paper (lm_optimizer) ----
    optimizer = lm_optimizer(lm, preset.lm_lr)
    step = 0
    if ckpt is not None:
        if "heads.weight" in ckpt["model"]:
            raise SystemExit(f"error: {resume_path} was written by an older lm.py (stacked tables and heads): "
                             "generate.py and evaluate.py read it, a resume needs a new LM run")
        lm.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
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

    # ---- loop ----
    lm.train()
    bar = tqdm(total=max_steps, initial=step, desc="lm", dynamic_ncols=True, disable=not rank.main)
    tokens_seen, started = 0, time.time()
    valid, losses = None, []
    try:
        while step < max_steps:
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
            batch_codes, melody = next(batches)  # (B / ranks, K, T), (B / ranks, 1, T · hop)
            pieces = ddp.micro_batches(list(range(len(descriptions))), micro_batch)
            loss_sum, per_codebook_sum = 0.0, 0.0
            for j, piece in enumerate(pieces):
                # Gradients add up over the micro-batches; DDP averages them over the ranks on the last one.
                sync = ddp.sync_gradients(model, last=j == len(pieces) - 1)
                ids, mask, chroma = batch_conditions(lm, tokenizer, [descriptions[i] for i in piece], melody[piece],
                                                     condition_dropout, (null[piece], drop_melody[piece]))
                with sync, autocast:
                    loss, per_codebook = model(batch_codes[piece].to(device), ids, mask, chroma)
                    (loss * len(piece) / len(descriptions)).backward()
                loss_sum = loss_sum + loss.detach().float() * len(piece) / len(descriptions)
                per_codebook_sum = per_codebook_sum + per_codebook.float() * len(piece) / len(descriptions)
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)  # paper: gradient clipping at 1
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss, per_codebook = ddp.mean_over_ranks(loss_sum, rank), ddp.mean_over_ranks(per_codebook_sum, rank)
            tokens_seen += batch_codes.numel() * rank.world
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", per_k="/".join(f"{x:.2f}" for x in per_codebook.tolist()),
                            tok_s=f"{tokens_seen / (time.time() - started):.0f}")
            if rank.main and (step % eval_every == 0 or step == max_steps):
                valid = evaluate(objective, tokenizer, valid_split, valid_pool, window, preset.lm_batch, autocast)
                # Plain cross-entropies on both sides (the objective also weighs the first frames, see
                # LMModel.compute_loss), so that train and held-out losses can be compared.
                tqdm.write(f"step {step}: train loss {per_codebook.mean():.3f} (objective {loss.item():.3f}), "
                           f"{valid_name.split()[0]} loss {valid.mean():.3f} "
                           f"per codebook {[round(x, 3) for x in valid.tolist()]} "
                           f"(chance: ln {cfg.codebook_size} = {math.log(cfg.codebook_size):.2f})")
                save_lm(resume_path, lm, tokenizer, step=step, optimizer=optimizer)  # rank 0 alone saves
    except (KeyboardInterrupt, data.DataError):  # Ctrl-C, or a file that changed on disk: nothing is lost
        if rank.main:
            tqdm.write(f"stopped: saving the LM at step {step} to {resume_path} (continue with --resume)")
            save_lm(resume_path, lm, tokenizer, step=step, optimizer=optimizer)
        raise
    bar.close()
    if rank.main:
        save_lm(resume_path, lm, tokenizer, step=step, optimizer=optimizer)
    seconds = time.time() - started
    if not rank.main:
        return dict(steps=step, seconds=seconds, losses=losses)
    if valid is None:
        valid = evaluate(objective, tokenizer, valid_split, valid_pool, window, preset.lm_batch, autocast)
    return dict(valid_loss_per_codebook=valid.tolist(), valid_loss=float(valid.mean()), steps=step,
                seconds=seconds, losses=losses, tokens_per_second=tokens_seen / max(seconds, 1e-9))


def batch_conditions(lm, tokenizer, descriptions, melody, condition_dropout=None, dropped=None):
    """Descriptions + melody audio → token ids (B, L), mask (B, L), chroma (B, F, 12) on the LM's device;
    with `dropped` (this rank's slice of the condition-dropout draws) the dropped conditions are nulled."""
    device = lm.null_chroma.device
    chroma = lm.chroma(melody.to(device))  # (B, 1, N) -> (B, F, 12)
    if dropped is not None:
        descriptions, chroma = condition_dropout(descriptions, chroma, null_chroma=lm.null_chroma, dropped=dropped)
    ids, mask = tokenizer.encode(descriptions)
    return ids.to(device), mask.to(device), chroma


@torch.no_grad()
def evaluate(objective, tokenizer, split, pool, window, batch_size, autocast=nullcontext()):
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
        batch_codes, melody = (torch.stack(x) for x in zip(*(split["windows"][item] for item in items)))
        ids, mask, chroma = batch_conditions(lm, tokenizer, [split["descriptions"][i] for i, _ in items], melody)
        with autocast:
            _, per_codebook = objective(batch_codes.to(lm.null_chroma.device), ids, mask, chroma)
        total += per_codebook.float().cpu() * len(items)
        count += len(items)
    lm.train()
    return total / count


# ---- what the stage calls ------------------------------------------------------------------------
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


def encode_dataset(codec: EncodecModel, data_dir, entries, folder, rank=ddp.Rank(), batch_size=32):
    """Encode every clip once with the frozen codec (§4.1) into `folder`: per split, an int16 array
    (K, total frames) and the clips' offsets in index.json. The clips are sorted by length and cut into
    batches of `batch_size` that do not depend on the number of ranks (rank r encodes batches r, r + N,
    ...), so the codes are the same under any N. Skipped when index.json says this codec and manifest
    were already encoded. Returns the index."""
    folder = Path(folder)
    key = hashlib.sha1(repr([(e["path"], e["split"]) for e in entries]).encode()
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
            data.codes_array(folder, split, shape=(codec.n_q, offsets[-1]))
        ddp.barrier(rank)
        array = data.codes_array(folder, split)
        order = sorted(range(len(ids)), key=lambda j: (lengths[j], j))  # similar lengths batched together
        batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)][rank.index::rank.world]
        for batch in tqdm(batches, desc=f"encode {split}", leave=False, disable=not rank.main):
            wavs = [load_audio(Path(data_dir) / entries[ids[j]]["path"], codec.sample_rate) for j in batch]
            wav = stack_wavs(wavs)  # (B, 1, N), zero-padded to the longest
            with torch.no_grad():
                codes = codec.encode(wav.to(codec_device(codec))).cpu()  # (B, 1, N) -> (B, K, T)
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
