"""Does a big manifest cost memory? The tiny preset trains a few steps of each stage on the toy manifest
and on a manifest ten times as long (the same files listed ten times), each in a fresh process; the
peak resident memory of the two is compared (the target: at most 200 MB more).

    python -m experiments.benchmark --manifest-memory          # or: python -m experiments.manifest_memory

The training stages read windows from disk and keep the LM's codes in a memory-mapped file, so only the
manifest's entries, the files' lengths and the codes' index grow with the number of clips.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import toy
import train
from stages import train_codec, train_lm

ROOT = Path(__file__).resolve().parents[1]


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("VmHWM not in /proc/self/status (Linux only)")


def measure(data_dir, out, steps):
    """In this process: `steps` codec steps, then `steps` LM steps (encoding every clip) -> figures."""
    torch.set_num_threads(2)
    preset = replace(train.TINY, codec_quantizer_warmup=0.0)
    started = time.time()
    train_codec(out, data_dir, preset, max_steps=steps, eval_every=10**9)
    codec_seconds = time.time() - started
    train_lm(out, data_dir, preset, max_steps=steps, eval_every=10**9)
    return dict(peak_mb=peak_mb(), codec_seconds=codec_seconds, lm_seconds=time.time() - started - codec_seconds)


def compare(data_dir="data/toy", copies=10, steps=5) -> dict:
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "manifest.jsonl").exists():
        toy.make_toy_dataset(data_dir, n=train.TINY.n_clips)
    lines = (data_dir / "manifest.jsonl").read_text().splitlines()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, n in (("toy", 1), ("10x", copies)):
            folder = Path(tmp) / name
            folder.mkdir()
            (folder / "clips").symlink_to(data_dir)
            entries = [json.loads(line) for _ in range(n) for line in lines]  # n copies, each its own dict
            for e in entries:
                e["path"] = "clips/" + e["path"]
                if "melody_path" in e.get("attributes", {}):
                    e["attributes"]["melody_path"] = "clips/" + e["attributes"]["melody_path"]
            (folder / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
            result = subprocess.run([sys.executable, "-m", "experiments.manifest_memory", "--measure", str(folder),
                                     "--out", str(Path(tmp) / f"run_{name}"), "--steps", str(steps)],
                                    cwd=ROOT, capture_output=True, text=True, check=True)
            results[name] = dict(json.loads(result.stdout.strip().splitlines()[-1]), clips=len(entries))
    toy_run, big = results["toy"], results["10x"]
    return {"clips": f"{toy_run['clips']} vs {big['clips']}",
            "peak_mb": f"{toy_run['peak_mb']:.0f} vs {big['peak_mb']:.0f}",
            "peak_increase_mb": big["peak_mb"] - toy_run["peak_mb"],
            "seconds (codec, LM incl. encoding)": f"{toy_run['codec_seconds']:.0f}, {toy_run['lm_seconds']:.0f} vs "
                                                  f"{big['codec_seconds']:.0f}, {big['lm_seconds']:.0f}"}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measure", help=argparse.SUPPRESS)  # the subprocess: one manifest
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--data", default="data/toy")
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.out, args.steps)))
    else:
        for key, value in compare(args.data, steps=args.steps).items():
            print(f"{key:36s} {value}")
