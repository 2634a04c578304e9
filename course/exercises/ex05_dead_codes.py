"""Exercise 5 (§2.1, EnCodec's quantizer): reviving dead codebook entries.

An entry that no vector picks is wasted: its EMA count N_j decays towards 0 and it never moves again.
EnCodec (after Jukebox and SoundStream) revives such entries on live data: every entry whose count is
under the threshold,

    dead_j  ⇔  N_j < self.dead_threshold,

is replaced by a random row of the current batch x. The entry is e_j = m_j / N_j in the EMA's terms, so
reviving it means resetting its statistics with it, N_j = threshold and m_j = threshold · (new vector):
otherwise the next EMA update recomputes e_j from the old m_j and N_j and undoes the revival (the bug
of the reference libraries, which overwrite only the codebook). Write `VectorQuantizer.revive_dead_codes(x)`
in rvq.py: x (M, D); it updates self.codebook, self.cluster_size and self.embed_sum in place for the
dead entries only, leaves live entries untouched, and returns the number of revived entries (an int).
(Under data parallelism the reference gathers the rows of all ranks and broadcasts rank 0's random
picks, through _all_gather_rows and _broadcast_from_rank0; in one process both do nothing.)
"""
from contextlib import contextmanager

import torch

import rvq
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=5, title="Reviving dead codes", section="§2.1",
    blanks=[("rvq.py", "VectorQuantizer.revive_dead_codes")],
    hints=["dead = self.cluster_size < self.dead_threshold is a (V,) mask; n_dead = int(dead.sum()); return 0 "
           "straight away when it is 0.",
           "picks = torch.randint(0, x.shape[0], (n_dead,)) chooses the rows; self.codebook[dead] = x[picks] "
           "writes them into the dead entries only (a boolean mask on the left of = assigns in place).",
           "Reset the statistics with the entry: cluster_size[dead] = threshold and embed_sum[dead] = "
           "threshold · x[picks], so that embed_sum / cluster_size is the new vector and the next EMA keeps it."],
)
THRESHOLD = 2.0
# Rows of a batch, all far from the codebook and from each other.
X = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0], [7.0, 7.0], [-7.0, -7.0]])


def quantizer(counts):
    """Four 2-D entries e_j = [j + 1, j + 1] with EMA counts `counts` and sums m_j = N_j · e_j."""
    vq = rvq.VectorQuantizer(dim=2, codebook_size=4, dead_threshold=THRESHOLD)
    codebook = torch.arange(1.0, 5.0)[:, None].repeat(1, 2)
    vq.codebook.copy_(codebook)
    vq.cluster_size.copy_(torch.tensor(counts))
    vq.embed_sum.copy_(codebook * vq.cluster_size[:, None])
    vq.initialized.fill_(True)
    return vq


@contextmanager
def seeded(seed):
    """The global random generator at `seed`, put back afterwards (the revival draws from it)."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def revive(vq, x):
    """vq.revive_dead_codes(x), and the buffers before it."""
    before = {name: getattr(vq, name).clone() for name in ("codebook", "cluster_size", "embed_sum")}
    with seeded(0):
        count = vq.revive_dead_codes(x)
    return count, before


def as_count(count):
    if isinstance(count, torch.Tensor) and count.numel() == 1:
        count = count.item()
    if not isinstance(count, (int, float)) or count != int(count):
        raise Wrong(f"revive_dead_codes should return the number of revived entries as an int, got {count!r}")
    return int(count)


def reference_ema_update(vq, x, indices):
    """One EMA step by VQ-VAE's formulas (exercise 4's function, written out here)."""
    counts = torch.bincount(indices, minlength=vq.codebook_size).to(x)
    sums = torch.zeros_like(vq.embed_sum).index_add_(0, indices, x)
    vq.cluster_size.mul_(vq.decay).add_(counts, alpha=1 - vq.decay)
    vq.embed_sum.mul_(vq.decay).add_(sums, alpha=1 - vq.decay)
    total = vq.cluster_size.sum()
    smoothed = (vq.cluster_size + vq.epsilon) / (total + vq.codebook_size * vq.epsilon) * total
    vq.codebook.copy_(vq.embed_sum / smoothed[:, None])


def check_dead_entries_get_input_rows():
    """Counts [5, 0.5, 3, 1], threshold 2: entries 1 and 3 become rows of x, 0 and 2 are untouched; returns 2."""
    vq = quantizer([5.0, 0.5, 3.0, 1.0])
    count, before = revive(vq, X)
    count = as_count(count)
    for j in (0, 2):
        for name in ("codebook", "cluster_size", "embed_sum"):
            if not torch.equal(getattr(vq, name)[j], before[name][j]):
                raise Wrong(f"live entry {j} (count {float(before['cluster_size'][j])} ≥ threshold {THRESHOLD}) "
                            f"changed its {name}: only entries with cluster_size < dead_threshold are revived")
    for j in (1, 3):
        if not (vq.codebook[j] == X).all(1).any():
            raise Wrong(f"dead entry {j} (count {float(before['cluster_size'][j])} < {THRESHOLD}) is "
                        f"{vq.codebook[j].tolist()}, not a row of the batch x: write x[picks] into codebook[dead]")
    if count != 2:
        raise Wrong(f"revive_dead_codes returned {count}, expected 2: the number of entries revived")


def check_statistics_reset_with_the_entry():
    """A revived entry's statistics agree with it: codebook = embed_sum / cluster_size, count ≥ threshold."""
    vq = quantizer([5.0, 0.5, 3.0, 1.0])
    revive(vq, X)
    for j in (1, 3):
        count = float(vq.cluster_size[j])
        if not count > 0 or not torch.allclose(vq.embed_sum[j] / count, vq.codebook[j], atol=1e-5):
            raise Wrong(f"revived entry {j}: codebook {vq.codebook[j].tolist()} but embed_sum / cluster_size = "
                        f"{(vq.embed_sum[j] / count).tolist()}; reset the statistics with the entry "
                        "(embed_sum = threshold · new vector, cluster_size = threshold), or the EMA undoes it")
        if count < THRESHOLD:
            raise Wrong(f"dead entry {j} has count {count} after the revival, under the threshold {THRESHOLD}: a revived "
                        "entry must not be dead the moment it is revived; set cluster_size[dead] to the threshold")


def check_next_ema_update_keeps_the_revival():
    """After the revival, an EMA step with no rows for the revived entries leaves them at their new vectors."""
    vq = quantizer([5.0, 0.5, 3.0, 1.0])
    revive(vq, X)
    revived = vq.codebook[[1, 3]].clone()
    reference_ema_update(vq, torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.tensor([0, 2]))
    for j, vector in zip((1, 3), revived):
        if not torch.allclose(vq.codebook[j], vector, rtol=1e-3, atol=1e-3):
            old = [float(j + 1)] * 2
            if torch.allclose(vq.codebook[j], torch.tensor(old), rtol=1e-3):
                raise Wrong(f"after the next EMA update entry {j} is back at its old vector {old}, not the revived "
                            f"{vector.tolist()}: the revival only overwrote the codebook, and the EMA recomputed "
                            "embed_sum / cluster_size from the old statistics (the reference libraries' bug); "
                            "reset cluster_size and embed_sum of the dead entries too")
            raise Wrong(f"after the next EMA update entry {j} is {vq.codebook[j].tolist()}, not the revived "
                        f"{vector.tolist()}: set embed_sum = threshold · new vector and cluster_size = threshold")


def check_nothing_dead_nothing_changed():
    """Counts [5, 2, 3, 4], threshold 2 (a count equal to it is alive): returns 0 and changes nothing."""
    vq = quantizer([5.0, 2.0, 3.0, 4.0])
    count, before = revive(vq, X)
    count = as_count(count)
    for name in ("codebook", "cluster_size", "embed_sum"):
        if not torch.equal(getattr(vq, name), before[name]):
            raise Wrong(f"no entry is under the threshold, yet {name} changed: dead means cluster_size < "
                        "dead_threshold (strictly; a count of exactly 2 is alive)")
    if count != 0:
        raise Wrong(f"revive_dead_codes returned {count} when no entry is dead, expected 0")
