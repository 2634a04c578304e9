"""Can our LM keep a beat? A synthetic check of the tiny LM recipe, without the codec.

NOTES.md, "LM reads codebook 1 only": on codec tokens, our LM reading all four codebooks ended notes at random
times. This script asks whether the LM itself can count, by training it on token sequences whose
rhythm is known exactly:

  codebook 1 = runs of one token, each lasting one beat of P frames (P = 18.75, 27.27 or 42.86 at
               50 Hz: the toy tempi 160 / 110 / 70 BPM), the tempo named by a one-word "description";
               or, with --pitch-tracks, the real toy melodies' MIDI note per frame (a perfect codec);
               or, with --pitch-tracks and --codec RUN, the run's codec tokens of those clips (codebooks
               1..--codebooks), the samples decoded and the tempo heard by the run's attribute probe.

and then sampling from it. Knobs add, one at a time, what real codec tokens have and clean runs lack:

  --flicker p     each frame of a run shows a second "partner" token with probability p
                  (the codec's tokens flicker inside a held note: 21-29% of frames under drums)
  --rests p       a run is a half-beat note then a half-beat rest with probability p (as in the toy bars)
  --noisy-finer   codebooks 2..4 are random every frame (the codec's finer codebooks cost 2.8-4.5 nats)
  --hide-finer    the LM reads codebook 1 only (LMConfig.input_codebooks = 1, as train.py's tiny preset)

The measured tables (1000 steps, ~2.5 min each on 2 CPU cores) are in NOTES.md, "LM reads codebook 1 only".

Shape letters: B batch, K codebooks, T frames (200 = 4 s at 50 Hz).
Data flow: synthetic codes -> lm.LMModel (the tiny preset's sizes and optimiser) -> sampled codes.

    python -m experiments.count_check --flicker 0.1     # from the repository's root
"""
import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

import data
import probe as attribute_probe
from lm import LMModel
from musicgen import generate_codes
from encodec import load_codec
from train import TINY_LM
from stages import cosine_lr, lm_optimizer

TEMPI = ("fast", "medium", "slow")  # the toy tempo words; a batch's `tempo` indexes this tuple
PERIODS = (18.75, 27.27, 42.86)  # frames per beat at 50 Hz for 160, 110 and 70 BPM (TEMPI's order)
T = 200  # frames: the 4 s training window


def runs_batch(B, args, generator, pitch_tracks=None):
    """(codes (B, K, T), tempo (B,), partner (B, T)): partner[b, t] is the flicker token of t's run."""
    rand = lambda *shape: torch.rand(*shape, generator=generator)
    tempo = torch.randint(0, 3, (B,), generator=generator)
    codes = torch.zeros(B, args.codebooks, T, dtype=torch.long)
    partner = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        if pitch_tracks is not None:  # a real clip of this tempo: (1, T) pitch track or (K, T) codec tokens
            tracks = pitch_tracks[int(tempo[b])]
            track = tracks[int(torch.randint(len(tracks), (1,), generator=generator))]
            codes[b, :len(track)] = track[:args.codebooks]
            continue
        period = PERIODS[tempo[b]]
        starts = [round(i * period) for i in range(math.ceil(T / period) + 1)]
        for start, end in zip(starts, starts[1:]):
            end = min(end, T)
            token, other = torch.randint(1, 256, (2,), generator=generator)  # 0 is the rest
            run = torch.where(rand(end - start) < args.flicker, other, token)   # (end - start,)
            if float(rand(1)) < args.rests:
                run[(end - start) // 2:] = 0  # half a beat of note, half a beat of rest
            codes[b, 0, start:end] = run
            partner[b, start:end] = other
    if args.codebooks > 1 and not args.codec:
        if args.noisy_finer:
            codes[:, 1:] = torch.randint(0, 256, (B, args.codebooks - 1, T), generator=generator)
        else:
            codes[:, 1:] = codes[:, :1]  # finer codebooks repeat codebook 1: no extra information
    return codes, tempo, partner


def run_lengths(row):
    """Lengths of the runs of equal tokens in a (T,) sequence, the unfinished last run excluded."""
    changes = (row[1:] != row[:-1]).nonzero().flatten() + 1
    return (changes[1:] - changes[:-1]).tolist()


def on_grid(lengths, period):
    """Share of lengths within 2 frames of a multiple of half a beat (up to 3 beats)."""
    near = [min(abs(n - m * period) for m in (0.5, 1, 1.5, 2, 2.5, 3)) <= 2 for n in lengths]
    return sum(near) / max(1, len(near))


def main():
    p = argparse.ArgumentParser(description="Can the tiny LM count beats? Synthetic runs, no codec.")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--codebooks", type=int, default=1, help="K (1 or 4)")
    p.add_argument("--flicker", type=float, default=0.0)
    p.add_argument("--rests", type=float, default=0.0)
    p.add_argument("--noisy-finer", action="store_true")
    p.add_argument("--hide-finer", action="store_true")
    p.add_argument("--pitch-tracks", help="dataset folder: use its training melodies' pitch tracks as codebook 1")
    p.add_argument("--codec", help="run folder: use its codec's tokens of the --pitch-tracks folder's training clips "
                   "(codebooks 1..--codebooks) and score the samples with the run's attribute probe")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.codec and not args.pitch_tracks:
        p.error("--codec needs --pitch-tracks DIR, the dataset whose clips it encodes")
    torch.manual_seed(args.seed)

    # ---- data: the real melodies, if asked (25 Hz pitch track -> 50 Hz frames), or their codec tokens ----
    pitch_tracks = None
    if args.codec:  # the codec's tokens of the clips: what the real LM learns from
        codec, _ = load_codec(Path(args.codec) / "codec.pt")
        clips = data.load_clips(args.pitch_tracks, codec.sample_rate, split="train")
        with torch.no_grad():
            tokens = [codec.encode(clip.wav[None])[0, :, :T] for clip in clips]  # (1, N) -> (K, T) each
        pitch_tracks = [[t for t, clip in zip(tokens, clips) if clip.attributes["tempo"] == name] for name in TEMPI]
    elif args.pitch_tracks:
        rows = [json.loads(line) for line in (Path(args.pitch_tracks) / "manifest.jsonl").read_text().splitlines()]
        pitch_tracks = [[torch.tensor(r["attributes"]["pitch"]).repeat_interleave(2)[None, :T] for r in rows
                         if r["split"] == "train" and r["attributes"]["tempo"] == name]
                        for name in TEMPI]  # per tempo, (1, T) tracks
    if pitch_tracks is not None and not all(pitch_tracks):
        p.error(f"{args.pitch_tracks}: needs training clips of every tempo (fast, medium, slow)")

    # ---- model: the tiny preset's LM, no condition dropout (the tempo word is all it gets) ----
    cfg = replace(TINY_LM, n_q=args.codebooks, codebook_size=256, frame_rate=50.0, sample_rate=16000,
                  text_vocab_size=8, cfg_dropout=0.0, melody_dropout=1.0, start_weight=1.0,
                  input_codebooks=1 if args.hide_finer else None)  # --hide-finer: read codebook 1 only
    lm = LMModel(cfg)
    describe = lambda tempo: lm.encode_text((tempo + 2)[:, None], torch.ones(len(tempo), 1, dtype=torch.bool))

    # ---- optimiser and schedule: as train.py's tiny preset (AdamW (0.9, 0.95), weight decay 0.1 on
    # matrices only, lr 2e-3 with 100 warmup steps then cosine, gradient norm clipped at 1) ----
    optimizer = lm_optimizer(lm, 2e-3)
    generator, began = torch.Generator().manual_seed(args.seed), time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, args.steps, 100, 2e-3)
        codes, tempo, _ = runs_batch(12, args, generator, pitch_tracks)  # (12, K, T)
        text, mask = describe(tempo)
        loss, per_codebook = lm.train().compute_loss(codes, text, mask, None)  # None: the null melody
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step}: codebook-1 loss {per_codebook[0]:.3f} ({time.time() - began:.0f} s)")

    # ---- teacher-forced: probability of a new note, on the beat and inside a run ----
    lm.eval()
    codes, tempo, partner = runs_batch(48, args, torch.Generator().manual_seed(args.seed + 1), pitch_tracks)
    text, mask = describe(tempo)
    with torch.no_grad():
        sequence, _ = lm.pattern.build(codes, lm.special)                       # (B, K, T) -> (B, K, S)
        logits, _ = lm.pattern.revert_logits(lm(sequence, lm.conditions(text, mask, None, sequence.shape[-1])))
        probs = logits[:, 0].softmax(-1)                                        # (B, T, card): frame t's prediction
    if pitch_tracks is None:
        previous = codes[:, 0, :-1]                                             # (B, T - 1): the token before t
        keep = probs[:, 1:].gather(-1, previous[..., None])[..., 0]             # P(same token as before)
        keep = keep + probs[:, 1:].gather(-1, partner[:, :-1, None])[..., 0]    # or its flicker partner
        keep = keep + (probs[:, 1:, 0] if args.rests > 0 else 0)                # or the rest
        new_note = (1 - keep).clamp(min=0)                                      # (B, T - 1), for frames 1..T-1
        on_beat = torch.zeros_like(new_note, dtype=torch.bool)
        for b in range(48):
            for i in range(1, math.ceil(T / PERIODS[tempo[b]])):
                on_beat[b, round(i * PERIODS[tempo[b]]) - 1] = True
        print(f"teacher-forced P(new note): on the beat {new_note[on_beat].mean():.2f}, "
              f"inside a run {new_note[~on_beat].mean():.2f}")

    # ---- sampled: do the runs keep the half-beat grid? ----
    with torch.no_grad():
        sampled = generate_codes(lm, text, mask, None, T, cfg_coef=1.0, top_k=250,
                                 generator=torch.Generator().manual_seed(args.seed + 2))  # (48, K, T)
    # (Not for codec tokens: they change at every one-frame transition token, so run lengths say little.)
    for t, name in enumerate(TEMPI if not args.codec else ()):
        rows = (tempo == t).nonzero().flatten().tolist()
        made = sum((run_lengths(sampled[b, 0]) for b in rows), [])
        given = sum((run_lengths(codes[b, 0]) for b in rows), [])
        print(f"{name} (beat {PERIODS[t]} frames): sampled runs on the half-beat grid {on_grid(made, PERIODS[t]):.2f} "
              f"({len(made)} runs), training-like data {on_grid(given, PERIODS[t]):.2f}")
    if args.codec:  # the tempo as the probe hears it, in the decoded samples and in the decoded training codes
        probe, _ = attribute_probe.load_or_train_probe(args.codec, args.pitch_tracks)
        heard = torch.tensor([probe.attributes["tempo"].index(name) for name in TEMPI])  # our index -> probe's
        for name, tokens in (("training clips", codes), ("samples", sampled)):
            with torch.no_grad():
                audio = codec.decode(tokens)  # (48, K, T) -> (48, 1, N), K codebooks
            _, probs, _ = attribute_probe.probe_outputs(probe, audio, codec.sample_rate)
            hits = probs["tempo"].argmax(-1) == heard[tempo]
            print(f"{name}, decoded: the probe hears the tempo of {hits.float().mean():.2f}, "
                  f"beat {attribute_probe.beat_strength(audio, codec.sample_rate).mean():.2f}")


if __name__ == "__main__":
    main()
