"""Residual vector quantization (RVQ): how EnCodec turns a latent vector into K small integers.

Paper §2.1: "EnCodec [...] quantizes the latent space with Residual Vector Quantization (RVQ): the
first codebook quantizes the encoder output, the second quantizes what the first left over, and so
on." Each level k picks the nearest of `codebook_size` vectors to the residual r_k:

    q_1 = Q_1(z),   q_k = Q_k(r_k)  with  r_k = z - (q_1 + ... + q_{k-1}),   ẑ = Σ_k q_k

so the first codebook carries most of the information and later ones refine it. That ordering is why
the LM's interleaving patterns (patterns.py) can treat codebook 1 specially.

Codebooks are learned as in SoundStream/EnCodec, not by gradient descent: each entry is the
exponential moving average (EMA) of the vectors assigned to it (online k-means, van den Oord et al.,
2017, appendix), started from k-means on the first batch; entries nobody uses are revived on live
data. Gradients reach the encoder through the straight-through estimator and the commitment loss.

Data parallelism (torchrun + DistributedDataParallel): each rank quantizes its own slice of the global
batch, but the codebook must learn from the whole batch and stay the same on every rank. So in
training mode the EMA statistics are summed over ranks, k-means and revival see the gathered global
batch, and every random draw is rank 0's, broadcast: every rank ends the step with the buffers a single
process would have after the concatenated batch. Eval, encode and decode never communicate.

Shape letters (DESIGN.md): B batch, K codebooks (n_q), T frames, D latent dimension, M vectors (B·T).
Data flow: encodec.py's encoder → z (B, D, T) → ResidualVectorQuantizer → codes (B, K, T) and
ẑ (B, D, T) → decoder. The codes are what the LM (musicgen.py) models.
"""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


# ---- data parallelism: no-ops in a single process -------------------------------------------------
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over all ranks (in place)."""
    if _distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def _all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(M, D) per rank -> (world_size · M, D): every rank's rows in rank order, i.e. the global batch.
    Ranks must hold the same number of rows (equal slices of the global batch)."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _broadcast_from_rank0(x: torch.Tensor) -> torch.Tensor:
    """x overwritten by rank 0's value (in place): one source for every random choice."""
    if _distributed():
        dist.broadcast(x, src=0)
    return x


def kmeans(x: torch.Tensor, n_clusters: int, n_iters: int = 10, generator=None):
    """Lloyd's k-means on the rows of x: (M, D) -> centroids (n_clusters, D), counts (n_clusters,).

    Starts from random rows of x (with replacement if M < n_clusters); an empty cluster keeps its
    previous centroid.
    """
    M, D = x.shape
    start = torch.randint(0, M, (n_clusters,), generator=generator) if M < n_clusters \
        else torch.randperm(M, generator=generator)[:n_clusters]
    centroids = x[start].clone()
    for _ in range(n_iters):
        assign = torch.cdist(x, centroids).argmin(dim=1)              # (M,) nearest centroid per row
        counts = torch.bincount(assign, minlength=n_clusters).to(x)   # (n_clusters,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)   # (n_clusters, D)
        used = counts > 0
        centroids[used] = sums[used] / counts[used, None]
    assign = torch.cdist(x, centroids).argmin(dim=1)
    return centroids, torch.bincount(assign, minlength=n_clusters).to(x)


class VectorQuantizer(nn.Module):
    """One codebook: nearest-neighbour assignment, EMA updates, k-means init, dead-code revival.

    Args:
        dim: D, size of the vectors.
        codebook_size: entries in the codebook (paper: 2048; tiny: 256).
        decay: EMA decay of the counts and sums (paper/EnCodec: 0.99).
        epsilon: Laplace smoothing of the counts, so no entry divides by zero.
        dead_threshold: an entry whose EMA count falls below this is revived (paper: 2). The count is
            "assignments per batch" (the global batch, all ranks together, under data parallelism), so it
            must be scaled with the batch; see EncodecConfig.
    The codebook lives in buffers (not parameters): the optimizer never touches it.
    """

    def __init__(self, dim: int, codebook_size: int, decay: float = 0.99, epsilon: float = 1e-5,
                 dead_threshold: float = 2.0):
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.decay, self.epsilon, self.dead_threshold = decay, epsilon, dead_threshold
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("codebook", torch.zeros(codebook_size, dim))     # e_j, (codebook_size, D)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))      # EMA of counts N_j
        self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))    # EMA of sums m_j

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest entry per row: (M, D) -> indices (M,). ||x - e||² = ||x||² - 2 x·e + ||e||²."""
        distances = (x.pow(2).sum(1, keepdim=True) - 2 * x @ self.codebook.t()
                     + self.codebook.pow(2).sum(1)[None])  # (M, codebook_size)
        return distances.argmin(dim=1)

    @torch.no_grad()
    def init_kmeans(self, x: torch.Tensor, vectors_per_batch: int = None):
        """k-means on the first training batch (EnCodec): entries start where the data is, so none
        begins dead. x (M, D). If x is larger than a training batch, give the batch's vector count:
        the counts are rescaled to "assignments per batch", the unit of the EMA and dead threshold."""
        centroids, counts = kmeans(x, self.codebook_size)
        counts = counts * (vectors_per_batch or len(x)) / len(x)
        self.codebook.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, indices: torch.Tensor):
        """Online k-means step (VQ-VAE appendix A.1), x (M, D), indices (M,):

            N_j ← γ N_j + (1 - γ) n_j          m_j ← γ m_j + (1 - γ) Σ_{i: idx_i = j} x_i
            e_j = m_j / Ñ_j,  Ñ_j = (N_j + ε) / (Σ N + V ε) · Σ N     (Laplace smoothing, V entries)

        Under data parallelism x is this rank's slice: n_j and the sums are summed over ranks, so
        every rank applies the global batch's statistics. (Summing, not gathering the vectors: a sum
        over the batch is the sum of the ranks' sums, and it sends V·(D+1) numbers, not M·D.)
        """
        counts = torch.bincount(indices, minlength=self.codebook_size).to(x)  # n_j, (codebook_size,)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, x)     # (codebook_size, D)
        _all_reduce_sum(counts)
        _all_reduce_sum(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def revive_dead_codes(self, x: torch.Tensor) -> int:
        """Replace every entry whose EMA count is under the threshold by a random current input.

        Fix of a reference bug: audiocraft's (and vector-quantize-pytorch's) `expire_codes_` runs
        *before* the EMA update and only overwrites the codebook, leaving the EMA sum and count alone;
        the EMA update of the same step then recomputes codebook = embed_sum / cluster_size from the
        old statistics and silently undoes the revival (the entry stays dead). Here the revival runs
        *after* the EMA update and resets the statistics with the entry: count = threshold and sum =
        threshold · new vector, so e_j = m_j / N_j is the new vector and it survives the next update.
        Returns the number of revived entries. x (M, D): under data parallelism this rank's slice; the
        global batch is gathered and rank 0 draws the picks (the counts, so `dead`, agree on all ranks).
        """
        dead = self.cluster_size < self.dead_threshold  # (codebook_size,) bool
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        x = _all_gather_rows(x)
        picks = _broadcast_from_rank0(torch.randint(0, x.shape[0], (n_dead,), device=x.device))
        self.codebook[dead] = x[picks]
        self.cluster_size[dead] = self.dead_threshold
        self.embed_sum[dead] = x[picks] * self.dead_threshold
        return n_dead

    def forward(self, x: torch.Tensor):
        """x (B, D, T) -> (quantized (B, D, T) with straight-through gradient, codes (B, T),
        commitment loss (scalar)). In training mode the codebook is updated (EMA, revival), and only
        then do ranks communicate (data parallelism): eval, encode and decode stay local."""
        B, D, T = x.shape
        assert D == self.dim, f"expected latent dimension {self.dim}, got {D}"
        flat = x.detach().transpose(1, 2).reshape(-1, D)  # (B, D, T) -> (M, D)
        if self.training and not bool(self.initialized):
            # k-means on the global batch; rank 0's result (its randperm) is kept by every rank.
            self.init_kmeans(_all_gather_rows(flat))
            for buffer in (self.codebook, self.cluster_size, self.embed_sum):
                _broadcast_from_rank0(buffer)
        indices = self.assign(flat)  # (M,)
        if self.training:
            self.ema_update(flat, indices)
            self.revive_dead_codes(flat)
        quantized = self.codebook[indices].view(B, T, D).transpose(1, 2)  # (M,) -> (B, D, T)
        # Commitment loss ||z - sg[q]||² (VQ-VAE, β = 1 as EnCodec): pulls the encoder towards the
        # codebook; the codebook itself moves by EMA, so there is no codebook loss term.
        commitment = F.mse_loss(x, quantized.detach())
        # Straight-through estimator: forward uses q, backward treats the quantizer as the identity.
        quantized = x + (quantized - x).detach()
        return quantized, indices.view(B, T), commitment

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T) -> vectors (B, D, T)."""
        return self.codebook[codes].transpose(1, 2)


class ResidualVectorQuantizer(nn.Module):
    """K VectorQuantizers on successive residuals (§2.1), with optional quantizer dropout.

    Args:
        dim: D, the encoder's latent dimension (paper: 128).
        n_q: K codebooks (paper: 4).
        codebook_size: entries per codebook (paper: 2048).
        quantizer_dropout: probability that a training batch uses only the first k ~ U{1..K} codebooks
            (EnCodec trains this way so one model serves several bitrates; it also makes "decode with
            the first k codebooks" meaningful, which the README's codebook comparison relies on).
        decay, dead_threshold: passed to every VectorQuantizer.
    """

    def __init__(self, dim: int, n_q: int, codebook_size: int, quantizer_dropout: float = 0.0,
                 decay: float = 0.99, dead_threshold: float = 2.0):
        super().__init__()
        self.n_q, self.codebook_size, self.quantizer_dropout = n_q, codebook_size, quantizer_dropout
        self.layers = nn.ModuleList(VectorQuantizer(dim, codebook_size, decay, dead_threshold=dead_threshold)
                                    for _ in range(n_q))

    def bitrate(self, frame_rate: float) -> float:
        """Bits per second: K indices of log2(codebook_size) bits per frame (paper: 4·11·50 = 2200)."""
        return self.n_q * math.log2(self.codebook_size) * frame_rate

    def forward(self, z: torch.Tensor, n_q: int = None):
        """z (B, D, T) -> (ẑ (B, D, T), codes (B, k, T), commitment loss, k used).

        k = n_q if given, else K, or a random 1..K in training with quantizer dropout.
        """
        B, D, T = z.shape
        if n_q is None:
            n_q = self.n_q
            if self.training and self.quantizer_dropout > 0:
                if torch.rand(()) < self.quantizer_dropout:
                    n_q = int(torch.randint(1, self.n_q + 1, ()))
                n_q = int(_broadcast_from_rank0(torch.tensor(n_q)))  # all ranks drop the same levels
        quantized_sum = torch.zeros_like(z)
        residual = z
        codes, losses = [], []
        for layer in self.layers[:n_q]:
            quantized, layer_codes, commitment = layer(residual)
            # Fix of a reference bug: EnCodec computed the next residual from the straight-through
            # output, r ← r - (r + sg[q - r]) = sg[r - q], whose gradient is zero, so the commitment
            # loss of levels 2..K never reached the encoder. Subtracting sg[q] keeps r_k = z - Σ sg[q_j]
            # differentiable w.r.t. z, so every level's commitment loss trains the encoder.
            residual = residual - quantized.detach()
            quantized_sum = quantized_sum + quantized.detach()
            codes.append(layer_codes)
            losses.append(commitment)
        # Straight-through for the whole stack: forward ẑ = Σ q_k, backward the identity to z.
        z_hat = z + (quantized_sum - z).detach()
        return z_hat, torch.stack(codes, dim=1), torch.stack(losses).mean(), n_q  # codes (B, k, T)

    @torch.no_grad()
    def init_codebooks(self, z: torch.Tensor, vectors_per_batch: int = None):
        """k-means initialisation of every level from one large batch z (B, D, T). Training batches of
        short crops hold fewer vectors than there are codes; k-means on them would duplicate entries."""
        B, D, T = z.shape
        residual = z.transpose(1, 2).reshape(-1, D)  # (B, D, T) -> (M, D)
        for layer in self.layers:
            layer.init_kmeans(residual, vectors_per_batch)
            residual = residual - layer.codebook[layer.assign(residual)]  # what the next level quantizes

    @torch.no_grad()
    def encode(self, z: torch.Tensor, n_q: int = None) -> torch.Tensor:
        """z (B, D, T) -> codes (B, k, T), k = n_q or K. Never updates the codebooks."""
        residual = z
        codes = []
        for layer in self.layers[:n_q or self.n_q]:
            B, D, T = residual.shape
            layer_codes = layer.assign(residual.transpose(1, 2).reshape(-1, D)).view(B, T)
            residual = residual - layer.decode(layer_codes)
            codes.append(layer_codes)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, k, T), k ≤ K -> ẑ (B, D, T) = Σ_k e_k[codes_k]: fewer codebooks, coarser audio."""
        B, k, T = codes.shape
        assert k <= self.n_q, f"got {k} codebooks, the quantizer has {self.n_q}"
        return sum(layer.decode(codes[:, i]) for i, layer in enumerate(self.layers[:k]))


def perplexity(codes: torch.Tensor, codebook_size: int) -> list:
    """Per-codebook usage: exp(entropy) of the code histogram; codebook_size = uniform, 1 = collapsed.
    codes (B, K, T) -> K floats."""
    B, K, T = codes.shape
    result = []
    for k in range(K):
        p = torch.bincount(codes[:, k].flatten(), minlength=codebook_size).double()
        p = p[p > 0] / p.sum()
        result.append(float(torch.exp(-(p * p.log()).sum())))
    return result
