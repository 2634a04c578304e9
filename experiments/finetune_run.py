"""What the real fine-tuning command costs at musicgen-small's shapes: `train.py --init-from`, full vs LoRA.

    python -m experiments.finetune_run [--checkpoint-activations] [--steps 3] [--seconds 10]

Nothing is downloaded: the published folder is a random HF MusicgenForConditionalGeneration at
musicgen-small's shapes (experiments/benchmark.py's reference_model: T5-base, the 32 kHz EnCodec, D 1024,
24 layers), saved as `save_pretrained` writes it (2.4 GB) with a small T5-layout tokenizer.json, and
the user's folder is 4 toy clips of `--seconds` + 1 s. Both are built once in `--work`. Then, each in
a process of its own, the command a user runs (batch 1, a `--seconds` window, no samples):

    python train.py --init-from BASE --data DATA --out RUN --lm.window_seconds=S --batch-size 1
                    --max-steps N --no-samples [--lora-rank 16] [--checkpoint-activations]

and the stage's own report: the median seconds of a training step and the process's peak resident
memory (loading the published folder included). Needs transformers and tokenizers (requirements-dev.txt).
experiments/finetune_memory.py measures the training step alone, without the loading.
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

import torch

import toy
from experiments.benchmark import reference_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_t5 import save_tokenizer  # noqa: E402  (a T5-layout tokenizer.json, as the tests write it)


def build(work: Path, seconds: float):
    """The random published folder and the toy folder, once."""
    base, data = work / "musicgen-small-random", work / "data"
    if not (base / "config.json").exists():
        reference_model("small", torch.float32).save_pretrained(base)
        save_tokenizer(base / "tokenizer.json")
    if not (data / "manifest.jsonl").exists():
        toy.make_toy_dataset(data, n=4, seed=0, duration=seconds + 1)
    return base, data


def run(base, data, out, seconds, steps, lora_rank, checkpoint) -> dict:
    command = [sys.executable, "train.py", "--init-from", str(base), "--data", str(data), "--out", str(out),
               f"--lm.window_seconds={seconds:g}", "--batch-size", "1", "--max-steps", str(steps), "--no-samples",
               "--eval-every", str(10 * steps)]
    command += ["--lora-rank", str(lora_rank)] if lora_rank else []
    command += ["--checkpoint-activations"] if checkpoint else []
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    found = re.search(r"lm: \d+ steps, ([\d.]+) s a step \(median\), peak memory ([\d.]+) GB", result.stdout)
    trained = re.search(r"\(([\d.]+)M trained\)", result.stdout)
    return dict(seconds_per_step=float(found[1]), peak_gb=float(found[2]), trained_m=float(trained[1]),
                lm_bytes=(out / "lm.pt").stat().st_size)


def main(argv=None):
    p = argparse.ArgumentParser(description="Seconds per step and peak memory of train.py --init-from, full vs LoRA.")
    p.add_argument("--seconds", type=float, default=10.0, help="training window")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--checkpoint-activations", action="store_true")
    p.add_argument("--work", default="/tmp/finetune_run", help="where the random base, the data and the runs go")
    args = p.parse_args(argv)
    work = Path(args.work)
    base, data = build(work, args.seconds)
    rows = {}
    for mode, rank in (("full", 0), ("lora", args.rank)):
        rows[mode] = run(base, data, work / f"run_{mode}", args.seconds, args.steps, rank, args.checkpoint_activations)
        row = rows[mode]
        print(f"{mode:5s} {row['seconds_per_step']:6.2f} s a step  peak {row['peak_gb']:5.2f} GB  trained "
              f"{row['trained_m']:7.2f}M  lm.pt {row['lm_bytes'] / 1e6:8.1f} MB")
    print(f"LoRA's peak / full's: {rows['lora']['peak_gb'] / rows['full']['peak_gb']:.2f} (target ≤ 0.60); "
          f"a {args.seconds:g} s window, batch 1" + (", activations checkpointed" if args.checkpoint_activations else ""))


if __name__ == "__main__":
    main()
