"""rvq.py under data parallelism: two real gloo processes, each training on its half of every batch, end
with identical codebooks, equal to those of one process trained on the whole batches (k-means init in
forward, EMA, dead-code revival, quantizer dropout), and the same codes; eval needs no process group."""
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rvq

WORLD, STEPS, B, D, T = 2, 5, 4, 8, 16  # global batch B, B / WORLD per rank
THRESHOLD = 1.5  # 64 vectors per batch for 32 entries: about 2 each, so entries die and are revived
SEED = 11  # torch's seed at step s is SEED + s; with it the dropout uses k = 1, 2, 2, 3, 1 codebooks, so
           # levels 2 and 3 go through k-means in forward on later steps


def make_quantizer():
    return rvq.ResidualVectorQuantizer(D, n_q=3, codebook_size=32, quantizer_dropout=0.5,
                                       dead_threshold=THRESHOLD).train()


def global_batch(step):
    """The same on every process (its own generator); shifted per step so the data moves."""
    return torch.randn(B, D, T, generator=torch.Generator().manual_seed(step)) + 0.3 * step


def train(quantizer, rows, seed_offset=0, revivals=None):
    """STEPS training steps on rows of each global batch, torch's global RNG seeded at every step.
    Returns each step's codes (B, k, T). revivals: a list, gets the number of levels that revived."""
    codes = []
    for step in range(STEPS):
        torch.manual_seed(SEED + step + seed_offset)
        _, step_codes, _, k = quantizer(global_batch(step)[rows])
        codes.append(step_codes)
        if revivals is not None:  # revival runs last and sets a revived entry's count to the threshold
            revivals.append(sum(bool((layer.cluster_size == THRESHOLD).any()) for layer in quantizer.layers[:k]))
    return codes


def _worker(rank, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    results = {}
    # same_seeds: every rank seeds like the single run; other_seeds: rank 1's RNG differs, so any draw
    # not taken from rank 0 would split the ranks.
    for name, seed_offset in (("same_seeds", 0), ("other_seeds", 7919 * rank)):
        quantizer = make_quantizer()
        codes = train(quantizer, rows, seed_offset)
        results[name] = {"state": quantizer.state_dict(), "codes": codes}
    if rank == 0:  # rank 0 evaluates alone while rank 1 waits at the barrier: a collective here would hang
        quantizer.eval()
        z = global_batch(99)
        z_hat, codes, _, k = quantizer(z)
        assert k == 3 and torch.equal(quantizer.encode(z), codes)
        quantizer.decode(codes)
    dist.barrier()
    torch.save(results, f"{tmp}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_end_with_the_codebooks_of_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    single, revivals = make_quantizer(), []
    single_codes = train(single, slice(None), revivals=revivals)
    assert sum(count > 0 for count in revivals) >= 3, revivals  # revival really happened, on several steps
    assert len({codes.shape[1] for codes in single_codes}) > 1  # quantizer dropout really happened
    assert all(layer.initialized for layer in single.layers)  # every level went through k-means in forward

    for name in ("same_seeds", "other_seeds"):
        states = [ranks[r][name]["state"] for r in range(WORLD)]
        for key, expected in single.state_dict().items():  # codebook, cluster_size, embed_sum, initialized
            assert torch.equal(states[0][key], states[1][key]), f"{name}: ranks differ on {key}"
            assert torch.allclose(states[0][key].double(), expected.double(), atol=1e-5), f"{name}: {key}"
        for step in range(STEPS):  # each rank's codes are the single run's codes of its slice
            codes = torch.cat([ranks[r][name]["codes"][step] for r in range(WORLD)])
            assert torch.equal(codes, single_codes[step]), f"{name}: codes differ at step {step}"

    # Eval-mode forward, encode and decode run without any process group (here, in the parent).
    assert not dist.is_initialized()
    single.eval()
    z = global_batch(99)
    z_hat, codes, _, k = single(z)
    assert k == 3 and torch.equal(single.encode(z), codes)
    assert torch.allclose(single.decode(codes), z_hat, atol=1e-6)
