"""What fine-tuning musicgen-small costs on this machine: seconds per step and peak memory, full vs LoRA.

    python -m experiments.finetune_memory --seconds 10 --steps 2

The LM at the published musicgen-small shapes (random weights: nothing is downloaded; T5 frozen, as in
§4.1), one training step = the paper's objective on a batch of one window of `--seconds` of random codes
(text encoded by the frozen T5 without gradients), backward, AdamW. Each mode runs in a process of its
own, so its peak resident memory (ru_maxrss) is its own:

    full   every LM parameter but T5's trains (AdamW keeps two moments per parameter)
    lora   lora.add_lora(rank 16, alpha 16) on the decoder's projections: only the adapters train

With --checkpoint-activations each decoder block keeps only its input and is recomputed in backward.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import lora
from lm import LMConfig, LMModel

ROOT = Path(__file__).resolve().parents[1]


def one_mode(mode: str, seconds: float, steps: int, rank: int, checkpoint: bool) -> dict:
    torch.manual_seed(0)
    cfg = replace(LMConfig(), text_vocab_size=32128)  # musicgen-small: D 1024, 24 layers, T5-base
    lm = LMModel(cfg)
    lm.text_encoder.requires_grad_(False)  # T5 frozen (§4.1)
    lm.transformer.checkpoint_activations = checkpoint
    if mode == "lora":
        lora.add_lora(lm, rank=rank, alpha=rank)
    trainable = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
    T = round(seconds * cfg.frame_rate)
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, cfg.codebook_size, (1, cfg.n_q, T), generator=generator)  # (B, K, T)
    ids, mask = torch.randint(0, 32128, (1, 12), generator=generator), torch.ones(1, 12, dtype=torch.bool)
    times = []
    lm.train()
    for _ in range(steps):
        began = time.perf_counter()
        with torch.no_grad():  # the frozen T5, and here its projection too (1M parameters: no gradient)
            text, text_mask = lm.encode_text(ids, mask)
        loss, _ = lm.compute_loss(codes, text, text_mask, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    return dict(mode=mode, seconds_per_step=min(times), peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                trainable_parameters=sum(p.numel() for p in trainable), parameters=sum(p.numel() for p in lm.parameters()))


def main(argv=None):
    p = argparse.ArgumentParser(description="Seconds per step and peak memory of full vs LoRA fine-tuning.")
    p.add_argument("--seconds", type=float, default=10.0, help="window length")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--checkpoint-activations", action="store_true", help="recompute each block in backward")
    p.add_argument("--mode", choices=["full", "lora"], help="(internal) run one mode here and print its JSON")
    args = p.parse_args(argv)
    if args.mode:
        print(json.dumps(one_mode(args.mode, args.seconds, args.steps, args.rank, args.checkpoint_activations)))
        return
    rows = []
    for mode in ("full", "lora"):
        result = subprocess.run([sys.executable, "-m", "experiments.finetune_memory", "--mode", mode, "--seconds",
                                 str(args.seconds), "--steps", str(args.steps), "--rank", str(args.rank)]
                                + (["--checkpoint-activations"] if args.checkpoint_activations else []),
                                cwd=ROOT, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(f"{mode:5s} {row['seconds_per_step']:7.1f} s a step  peak {row['peak_gb']:5.2f} GB  "
              f"trainable {row['trainable_parameters'] / 1e6:7.2f}M of {row['parameters'] / 1e6:.1f}M")
    print(f"LoRA's peak memory / full's: {rows[1]['peak_gb'] / rows[0]['peak_gb']:.2f} (target ≤ 0.60); "
          f"{torch.get_num_threads()} threads, a {args.seconds:g} s window, batch 1"
          + (", activations checkpointed" if args.checkpoint_activations else ""))


if __name__ == "__main__":
    main()
