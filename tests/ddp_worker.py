"""Runs one training stage as `python tests/ddp_worker.py ...` (one process) or under `torchrun` (several),
for tests/test_distributed.py. Writes the summary's per-step losses (rank 0) and every torch.save each
rank made, so the test can check who wrote the checkpoints."""
import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ddp  # noqa: E402
import train  # noqa: E402
from train_codec import train_codec  # noqa: E402
from train_lm import train_lm  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("stage", choices=["codec", "lm"])
p.add_argument("data")
p.add_argument("out")
p.add_argument("--steps", type=int, default=3)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--micro-batch", type=int, default=0)
p.add_argument("--workers", type=int, default=0)
p.add_argument("--resume", action="store_true")
args = p.parse_args()

torch.set_num_threads(1)
rank = ddp.setup(torch.device("cpu"))
out = Path(args.out)
saves = []
original_save = torch.save
torch.save = lambda obj, path, *a, **k: (saves.append(str(path)), original_save(obj, path, *a, **k))[1]
# The LM without dropout: nn.Dropout's masks are drawn per process on its slice, so with dropout N
# processes are the same run only in distribution, not to the last digit.
preset = replace(train.TINY, codec_batch=args.batch, lm_batch=args.batch, lm_warmup=1,
                 lm=replace(train.TINY_LM, dropout=0.0))
common = dict(max_steps=args.steps, eval_every=1000, rank=rank, micro_batch=args.micro_batch,
              workers=args.workers, resume=args.resume)
if args.stage == "codec":
    summary = train_codec(out, args.data, preset, n_valid=2, **common)
else:
    summary = train_lm(out, args.data, preset, **common)
(out / f"saves_{args.stage}_rank{rank.index}.json").write_text(json.dumps(saves))
if rank.main:
    (out / f"losses_{args.stage}.json").write_text(json.dumps(summary["losses"]))
ddp.teardown()
