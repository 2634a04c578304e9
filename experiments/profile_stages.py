"""Where a training stage's time goes: the project's functions (cProfile) and torch's operators
(torch.profiler), for a few hundred steps of the tiny recipe on the toy data.

    python -m experiments.profile_stages --stage codec --steps 300
    python -m experiments.profile_stages --stage lm --steps 300 --ops

The stage runs as train.py runs it (the tiny preset, its batch and crops, evaluation every `--eval-every`
steps), in a temporary run folder (the LM stage first trains a 50-step codec there). Printed: seconds
per step, then the project's functions by cumulative time (what calls what: data reading, the loss
terms, the optimizer, evaluations, the page), and with --ops torch's operators by their own time.
"""
import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import stages
import train

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description="Profile one training stage of the tiny recipe.")
    p.add_argument("--stage", choices=["codec", "lm"], default="codec")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--data", default="data/toy")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--ops", action="store_true", help="also torch.profiler's operator table (slower)")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)
    if not (Path(args.data) / "manifest.jsonl").exists():
        sys.exit(f"error: {args.data}/manifest.jsonl not found (python train.py builds data/toy)")
    torch.set_num_threads(torch.get_num_threads())
    preset = replace(train.TINY, codec_steps=args.steps if args.stage == "codec" else 50, lm_steps=args.steps)
    with tempfile.TemporaryDirectory() as out:
        if args.stage == "lm":
            stages.train_codec(out, args.data, preset, eval_every=10**9)
        run = (lambda: stages.train_codec(out, args.data, preset, eval_every=args.eval_every)) if args.stage == "codec" \
            else (lambda: stages.train_lm(out, args.data, preset, eval_every=args.eval_every,
                                          snapshots=(0.1, 0.3, 0.6, 1.0)))
        profiler = cProfile.Profile()
        began = time.perf_counter()
        if args.ops:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as ops:
                profiler.runcall(run)
        else:
            profiler.runcall(run)
        seconds = time.perf_counter() - began
    print(f"{args.stage} stage: {args.steps} steps in {seconds:.1f} s ({seconds / args.steps * 1000:.1f} ms a step, "
          f"profiling included), {torch.get_num_threads()} threads")
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative")
    project = [(key, value) for key, value in stats.stats.items() if str(ROOT) in key[0] and "experiments" not in key[0]]
    project.sort(key=lambda kv: -kv[1][3])  # cumulative time
    print(f"{'cumulative s':>12} {'own s':>8} {'calls':>8}  the project's functions (file:line name)")
    for (file, line, name), (_, calls, own, cumulative, _) in project[:args.top]:
        print(f"{cumulative:12.2f} {own:8.2f} {calls:8d}  {Path(file).name}:{line} {name}")
    # Outside the project: torch's backward pass, the optimizer and the kernels called from Python.
    others = [(key, value) for key, value in stats.stats.items() if str(ROOT) not in key[0]]
    others.sort(key=lambda kv: -kv[1][2])  # own time
    print(f"{'own s':>12} {'calls':>8}  the rest, by own time")
    for (file, line, name), (_, calls, own, _, _) in others[:args.top // 2]:
        print(f"{own:12.2f} {calls:8d}  {Path(file).name}:{line} {name}")
    if args.ops:
        print(ops.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
