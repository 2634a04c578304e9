"""Runs one training stage as `python tests/ddp_worker.py ...` (one process) or under `torchrun` (several),
for tests/test_distributed.py. Writes the summary's per-step losses and the first step's gradients, as
the optimizer saw them (rank 0: after DDP's averaging), and every torch.save each rank made, so the test
can check who wrote the checkpoints.

The stage trains in float64 (its weights, audio and losses; the chroma, a one-hot argmax, stays float32):
one process and N processes are the same run in exact arithmetic, and float64 keeps their rounding apart
small enough to compare (tests/test_distributed.py says why float32 does not)."""
import argparse
import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import audio  # noqa: E402
import conditioners  # noqa: E402
import data  # noqa: E402
import ddp  # noqa: E402
import losses  # noqa: E402
import train  # noqa: E402
import stages  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("stage", choices=["codec", "lm"])
p.add_argument("data")
p.add_argument("out")
p.add_argument("--steps", type=int, default=3)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--micro-batch", type=int, default=0)
p.add_argument("--workers", type=int, default=0)
p.add_argument("--resume", action="store_true")
p.add_argument("--interrupt-at", type=int, help="stop as Ctrl-C would after this step (every rank)")
args = p.parse_args()


class InterruptAt(tqdm):
    def __init__(self, *a, initial=0, **k):
        super().__init__(*a, initial=initial, **k)
        self.steps = initial  # counted here: a disabled bar (ranks > 0) does not count

    def update(self, n=1):
        super().update(n)
        self.steps += n
        if self.steps == args.interrupt_at:
            raise KeyboardInterrupt



def in_float32(function):
    """`function` run with float32 as the default dtype (the rest of this process runs in float64)."""
    def wrapped(*a, **k):
        torch.set_default_dtype(torch.float32)
        try:
            return function(*a, **k)
        finally:
            torch.set_default_dtype(torch.float64)
    return wrapped


# ---- float64: every tensor the stage creates, plus the three places that make float32 on purpose ----
torch.set_default_dtype(torch.float64)
read_window, load_audio, reconstruction_loss = data.read_window, audio.load_audio, losses.ReconstructionLoss
data.read_window = lambda *a: read_window(*a).double()                        # soundfile reads float32
stages.load_audio = lambda *a, **k: load_audio(*a, **k).double()
stages.ReconstructionLoss = lambda cfg: reconstruction_loss(cfg).double()  # float32 filter banks
metrics = in_float32(stages.codec_metrics)  # the held-out metrics, on a float32 copy of the codec
stages.codec_metrics = lambda codec, wav, **k: metrics(copy.deepcopy(codec).float(), wav.float(), **k)
conditioners.ChromaExtractor.__init__ = in_float32(conditioners.ChromaExtractor.__init__)

# The first step's gradients, as the optimizer receives them (under DDP: averaged over the ranks).
gradients = []


def record_gradients(optimizer, args, kwargs):
    if not gradients:
        gradients.append([p.grad.clone() for group in optimizer.param_groups for p in group["params"]
                          if p.grad is not None])


register_optimizer_step_pre_hook(record_gradients)

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
stages.tqdm = InterruptAt
recorded, mean_over_ranks = [], ddp.mean_over_ranks  # an interrupted LM run's losses, as it logged them


def recording(x, rank):
    x = mean_over_ranks(x, rank)
    if x.dim() == 0:
        recorded.append(x.item())
    return x


ddp.mean_over_ranks = recording
try:
    if args.stage == "codec":
        summary = stages.train_codec(out, args.data, preset, n_valid=2, **common)
    else:
        summary = stages.train_lm(out, args.data, preset, **common)
except KeyboardInterrupt:
    summary = dict(losses=recorded)
(out / f"saves_{args.stage}_rank{rank.index}.json").write_text(json.dumps(saves))
if rank.main:
    (out / f"losses_{args.stage}.json").write_text(json.dumps(summary["losses"]))
    original_save(gradients[0] if gradients else [], out / f"gradients_{args.stage}.pt")
ddp.teardown()
