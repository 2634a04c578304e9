"""Exercise 4 (§2.1; VQ-VAE, van den Oord et al. 2017, appendix A.1): the codebook's EMA update.

EnCodec's codebooks are not trained by gradient descent but by online k-means: each entry e_j follows
the exponential moving average of the vectors assigned to it. Per batch, with n_j the number of rows
assigned to entry j and decay γ,

    N_j ← γ N_j + (1 − γ) n_j                       (EMA of the counts, self.cluster_size)
    m_j ← γ m_j + (1 − γ) Σ_{i: idx_i = j} x_i      (EMA of the sums, self.embed_sum)
    e_j = m_j / Ñ_j,   Ñ_j = (N_j + ε) / (Σ_l N_l + V ε) · Σ_l N_l      (Laplace smoothing, V entries)

The smoothing keeps an entry nobody uses (N_j = 0, m_j = 0) finite, and rescales the smoothed counts
to the same total. Write `VectorQuantizer.ema_update(x, indices)` in rvq.py: x (M, D) the rows, indices
(M,) their entries; it updates self.cluster_size, self.embed_sum and self.codebook in place (they are
buffers: use copy_, mul_, add_ or index_add_, not new attributes). γ is self.decay, ε self.epsilon,
V self.codebook_size. (Keep the two _all_reduce_sum calls of the data-parallel version on n and the
sums if you like; in one process they do nothing.)
"""
import torch

import rvq
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=4, title="The codebook's EMA update", section="§2.1",
    blanks=[("rvq.py", "VectorQuantizer.ema_update")],
    hints=["n_j: torch.bincount(indices, minlength=self.codebook_size), as x's dtype. The sums per entry: "
           "torch.zeros_like(self.embed_sum).index_add_(0, indices, x).",
           "In place: self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay), the same for "
           "self.embed_sum with the sums. γ multiplies the old statistics, 1 − γ the batch's.",
           "total = self.cluster_size.sum(); smoothed = (self.cluster_size + ε) / (total + V·ε) * total; then "
           "self.codebook.copy_(self.embed_sum / smoothed[:, None])."],
)


def rounded(tensor):
    return torch.round(tensor, decimals=4).tolist()


def quantizer(decay, epsilon):
    """Three 2-D entries with hand-made statistics: N = [4, 2, 0], m = [[4, 8], [2, 0], [0, 0]]."""
    vq = rvq.VectorQuantizer(dim=2, codebook_size=3, decay=decay, epsilon=epsilon)
    vq.cluster_size.copy_(torch.tensor([4.0, 2.0, 0.0]))
    vq.embed_sum.copy_(torch.tensor([[4.0, 8.0], [2.0, 0.0], [0.0, 0.0]]))
    vq.codebook.copy_(torch.tensor([[1.0, 2.0], [1.0, 0.0], [0.0, 0.0]]))
    vq.initialized.fill_(True)
    return vq


# One batch: rows 0, 1 go to entry 0, rows 2, 3 to entry 1, none to entry 2:
#   n = [2, 2, 0], sums = [[8, 4], [4, 4], [0, 0]]
X = torch.tensor([[2.0, 4.0], [6.0, 0.0], [1.0, 1.0], [3.0, 3.0]])
INDICES = torch.tensor([0, 0, 1, 1])
# With γ = 0.75:  N = 0.75·[4, 2, 0] + 0.25·[2, 2, 0] = [3.5, 2, 0]
#                 m = 0.75·[[4, 8], [2, 0], [0, 0]] + 0.25·[[8, 4], [4, 4], [0, 0]] = [[5, 7], [2.5, 1], [0, 0]]
COUNTS = torch.tensor([3.5, 2.0, 0.0])
SUMS = torch.tensor([[5.0, 7.0], [2.5, 1.0], [0.0, 0.0]])
# (γ and 1 − γ swapped: N = 0.25·[4, 2, 0] + 0.75·[2, 2, 0] = [2.5, 2, 0].)
SWAPPED_COUNTS = torch.tensor([2.5, 2.0, 0.0])


def check_counts_and_sums_by_hand():
    """γ = 0.75, one hand-made batch: cluster_size and embed_sum are the EMAs worked out by hand."""
    vq = quantizer(decay=0.75, epsilon=1e-5)
    vq.ema_update(X, INDICES)
    if torch.allclose(vq.cluster_size, SWAPPED_COUNTS):
        raise Wrong(f"cluster_size is {vq.cluster_size.tolist()}, expected {COUNTS.tolist()}: the decay is swapped; "
                    "N ← γ·N + (1 − γ)·n keeps γ = 0.75 of the old count and adds 0.25 of the batch's")
    if not torch.allclose(vq.cluster_size, COUNTS):
        raise Wrong(f"cluster_size is {vq.cluster_size.tolist()}, expected {COUNTS.tolist()} = 0.75·[4, 2, 0] + "
                    "0.25·n with n = [2, 2, 0] the rows per entry (bincount with minlength = V)")
    if not torch.allclose(vq.embed_sum, SUMS):
        raise Wrong(f"embed_sum is {vq.embed_sum.tolist()}, expected {SUMS.tolist()}: the sums are an EMA too, "
                    "m ← γ·m + (1 − γ)·Σ x_i over the rows of each entry (index_add_ of x at `indices`)")


def check_codebook_with_laplace_smoothing():
    """ε = 0.5 (large, to see it): e_j = m_j / Ñ_j with the smoothed, renormalised counts, by hand."""
    vq = quantizer(decay=0.75, epsilon=0.5)
    vq.ema_update(X, INDICES)
    # N = [3.5, 2, 0] (total 5.5), Ñ = (N + 0.5) / (5.5 + 3·0.5) · 5.5 = [4, 2.5, 0.5] · 5.5/7 = [22/7, 13.75/7, 2.75/7]
    # e = m / Ñ = [[5, 7]·7/22, [2.5, 1]·7/13.75, [0, 0]]
    expected = torch.tensor([[35 / 22, 49 / 22], [17.5 / 13.75, 7 / 13.75], [0.0, 0.0]])
    got = vq.codebook
    if not torch.isfinite(got).all():
        raise Wrong(f"the codebook has NaN or inf entries, {rounded(got)}: divide by the smoothed counts Ñ_j, "
                    "which ε keeps above zero")
    if torch.allclose(got, SUMS / COUNTS.clamp(min=1e-12)[:, None], atol=1e-4):
        raise Wrong("codebook = m / N: the Laplace smoothing is missing, Ñ_j = (N_j + ε) / (ΣN + V·ε) · ΣN")
    if not torch.allclose(got, expected, atol=1e-5):
        if torch.allclose(got, SUMS / (COUNTS + 0.5)[:, None], atol=1e-5):
            raise Wrong("codebook = m / (N + ε): the smoothed counts must be renormalised to the same total, "
                        "Ñ_j = (N_j + ε) / (ΣN + V·ε) · ΣN")
        raise Wrong(f"with ε = 0.5 the codebook is {rounded(got)}, expected {rounded(expected)} = m_j / Ñ_j, "
                    "Ñ_j = (N_j + ε) / (ΣN + V·ε) · ΣN, computed from the updated N and m")


def check_unused_entry_stays_finite():
    """An entry with no count, no sum and no rows (default ε) stays at zero, not NaN or inf."""
    vq = quantizer(decay=0.99, epsilon=1e-5)
    vq.ema_update(X, INDICES)
    if not torch.isfinite(vq.codebook).all() or not torch.isfinite(vq.cluster_size).all():
        raise Wrong(f"entry 2, never used (N = 0, m = 0), became NaN or inf: {vq.codebook[2].tolist()}; the "
                    "codebook is m / Ñ with the smoothed count Ñ_j = (N_j + ε) / (ΣN + V·ε) · ΣN, never m / N")
    if not torch.allclose(vq.codebook[2], torch.zeros(2)):
        raise Wrong(f"entry 2, never used (m = 0), should stay at 0, got {vq.codebook[2].tolist()}")


def check_matches_definition_over_steps():
    """Random rows, 16 entries, three steps: the buffers equal the formulas applied entry by entry."""
    generator = torch.Generator().manual_seed(0)
    vq = rvq.VectorQuantizer(dim=4, codebook_size=16, decay=0.9, epsilon=1e-3)
    counts, sums = torch.rand(16, generator=generator) * 3, torch.randn(16, 4, generator=generator)
    vq.cluster_size.copy_(counts)
    vq.embed_sum.copy_(sums)
    batches = [(torch.randn(40, 4, generator=generator), torch.randint(0, 12, (40,), generator=generator))
               for _ in range(3)]  # entries 12..15 are never assigned
    for step, (x, indices) in enumerate(batches):
        vq.ema_update(x, indices)
        counts, sums = counts.clone(), sums.clone()
        for j in range(16):
            mine = indices == j
            counts[j] = 0.9 * counts[j] + 0.1 * mine.sum()
            sums[j] = 0.9 * sums[j] + 0.1 * x[mine].sum(0)
        total = counts.sum()
        codebook = sums / ((counts + 1e-3) / (total + 16 * 1e-3) * total)[:, None]
        for name, got, expected in (("cluster_size", vq.cluster_size, counts), ("embed_sum", vq.embed_sum, sums),
                                    ("codebook", vq.codebook, codebook)):
            if not torch.allclose(got, expected, atol=1e-4):
                j = int((got - expected).abs().reshape(16, -1).amax(1).argmax())
                raise Wrong(f"after step {step + 1}, {name}[{j}] is {rounded(got[j])}, expected {rounded(expected[j])} "
                            "by the formulas above (γ = 0.9, ε = 0.001, entries 12..15 never assigned), each step updating the last "
                            "step's buffers in place")
