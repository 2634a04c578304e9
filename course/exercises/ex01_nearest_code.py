"""Exercise 1 (§2.1, EnCodec's quantizer): the nearest codebook entry.

A vector quantizer replaces each latent vector x by the codebook entry e_j nearest to it,

    j(x) = argmin_j ||x − e_j||²,      ||x − e||² = ||x||² − 2 x·e + ||e||²,

and the index j is the token the LM will model. Write `VectorQuantizer.assign` in rvq.py: it takes
x (M, D) and returns the M indices (int64). The expansion above computes all M × V distances with one
matrix product instead of a loop (V = codebook_size entries).
"""
import torch

import rvq
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=1, title="Vector quantization: the nearest code", section="§2.1",
    blanks=[("rvq.py", "VectorQuantizer.assign")],
    hints=["The codebook is self.codebook, (V, D). You need a (M, V) table of squared distances, then "
           "the index of the smallest entry in each row.",
           "||x − e||² = ||x||² − 2 x·e + ||e||²: x.pow(2).sum(1, keepdim=True) is (M, 1), x @ codebook.t() "
           "is (M, V), codebook.pow(2).sum(1) is (V,). Broadcasting adds them to (M, V).",
           "argmin, not argmax: the nearest entry has the smallest distance."],
)


def quantizer(codebook):
    vq = rvq.VectorQuantizer(dim=codebook.shape[1], codebook_size=codebook.shape[0])
    vq.codebook.copy_(codebook)
    return vq


def check_hand_made_points():
    """Points next to a hand-made 2-D codebook get the entry they sit next to."""
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = torch.tensor([[1.0, 1.0], [9.0, 0.5], [0.2, 8.0], [11.0, 9.0], [6.0, 6.0]])
    got = quantizer(codebook).assign(x)
    expected = torch.tensor([0, 1, 2, 3, 3])
    if not isinstance(got, torch.Tensor) or got.shape != (5,):
        raise Wrong(f"assign should return a tensor of shape (M,) = (5,), got {getattr(got, 'shape', type(got))}")
    if got.dtype != torch.long:
        raise Wrong(f"indices must be int64 (they index the codebook and become the LM's tokens), got {got.dtype}")
    if not torch.equal(got, expected):
        if torch.equal(got, 3 - expected):
            raise Wrong(f"got {got.tolist()}, expected {expected.tolist()}: these are the farthest entries "
                        "(argmax of the distance instead of argmin?)")
        raise Wrong(f"got {got.tolist()} for the points {x.tolist()}, expected {expected.tolist()}")


def check_entries_of_different_norms():
    """Long and short codebook entries: the ||e||² term matters."""
    # x·e alone prefers the long entry [10, 0] for x = [1, 0]; the nearest is [1, 0.5].
    codebook = torch.tensor([[10.0, 0.0], [1.0, 0.5]])
    got = quantizer(codebook).assign(torch.tensor([[1.0, 0.0], [8.0, 0.0]]))
    if got.tolist() != [1, 0]:
        raise Wrong(f"got {got.tolist()}, expected [1, 0]: the largest dot product is not the nearest entry; "
                    "is the ||e||² term of ||x − e||² = ||x||² − 2 x·e + ||e||² missing?")


def check_matches_brute_force():
    """200 random vectors, 64 entries: every index is a nearest entry (by a brute-force distance)."""
    generator = torch.Generator().manual_seed(0)
    codebook = torch.randn(64, 8, generator=generator)
    x = torch.randn(200, 8, generator=generator)
    got = quantizer(codebook).assign(x)
    distances = ((x[:, None, :] - codebook[None]) ** 2).sum(-1)  # (M, V), by definition
    best = distances.min(dim=1).values
    chosen = distances.gather(1, got[:, None].long())[:, 0]
    worse = (chosen > best + 1e-4).nonzero()
    if len(worse):
        i = int(worse[0])
        raise Wrong(f"vector {i}: index {int(got[i])} is at squared distance {float(chosen[i]):.3f}, "
                    f"entry {int(distances[i].argmin())} at {float(best[i]):.3f}")
