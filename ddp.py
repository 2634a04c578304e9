"""Data parallelism with PyTorch's own engine: `torchrun` starts N processes, DistributedDataParallel
(DDP) averages their gradients. Nothing here is MusicGen; it is the little glue both training stages share.

    python train.py                               # one process: everything below is a no-op
    torchrun --nproc_per_node 2 train.py          # two processes on one machine (gloo on CPU, nccl on CUDA)

The rule that makes N processes train exactly like one: every random draw of step s comes from a
generator seeded by (seed, s), the same on every rank and for every N (`step_generator`). Each rank
draws the whole global batch's plan (which clips, where to crop, which conditions to drop) and keeps its
own contiguous slice (`shard`); DDP then averages the slices' gradients, which is the gradient of the
global batch's mean loss because the slices have equal sizes. A resume needs no generator state: step s
draws the same batch whenever it runs, under any N.
"""
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    """Who this process is: `index` of `world` processes; `main` (rank 0) logs, evaluates and saves."""
    index: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.index == 0


def setup(device: torch.device) -> Rank:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT); without torchrun, a single process. On CUDA each process takes GPU LOCAL_RANK."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Rank(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), device)


def teardown():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(rank: Rank):
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if rank.world > 1:
        dist.barrier()


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator of step `step`: the same on every rank and for any number of ranks. `stream`
    separates independent uses (the batch plan, the condition dropout) within one step."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 16 + stream)


def seed_step(seed: int, step: int, rank_index: int = 0):
    """Seed torch's global RNG at the start of a step. The codec stage gives every rank the same seed
    (its draws, the RVQ's, must agree everywhere; rvq.py also broadcasts them from rank 0); the LM stage
    adds the rank, so the ranks' dropout masks are not copies of rank 0's (rank 0's equal one process's)."""
    torch.manual_seed(seed * 1_000_003 + step * 16 + 15 + 7919 * rank_index)


def shard(items, rank: Rank):
    """Rank r's contiguous slice of a global batch (a list or a tensor); sizes must divide evenly."""
    n = len(items)
    if n % rank.world:
        raise ValueError(f"a global batch of {n} does not split evenly over {rank.world} processes")
    share = n // rank.world
    return items[rank.index * share:(rank.index + 1) * share]


def micro_batches(items, micro_batch: int):
    """A rank's share cut into micro-batches of `micro_batch` (gradient accumulation; 0 = one piece)."""
    size = micro_batch or len(items)
    if len(items) % size:
        raise ValueError(f"a share of {len(items)} does not split into micro-batches of {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


def sync_gradients(model: torch.nn.Module, last: bool):
    """The context of one micro-batch's forward and backward: DDP averages the gradients over the ranks on
    the step's last micro-batch only (`no_sync` on the others, whose gradients add up locally); a model
    that is not wrapped in DDP (one process) has nothing to sync."""
    if last or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def mean_over_ranks(x: torch.Tensor, rank: Rank) -> torch.Tensor:
    """The average of a (detached) tensor over the ranks: the global batch's loss for the log."""
    if rank.world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / rank.world


def wrap(model: torch.nn.Module, rank: Rank, find_unused: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `model` when there are several ranks, else `model` itself.
    `find_unused`: some parameters sit out (the embeddings of codebooks the LM does not read), so DDP
    must look for them after each forward instead of waiting for their gradients. No buffer sync at each
    forward: the only changing buffers, the RVQ codebooks, are kept equal by rvq.py's own all-reduce (all
    buffers start equal: same seed)."""
    if rank.world == 1:
        return model
    ids = [rank.device.index] if rank.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused,
                                                     forward_sync_buffers=False)
