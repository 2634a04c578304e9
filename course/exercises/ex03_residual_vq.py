"""Exercise 3 (§2.1, EnCodec's RVQ): residual vector quantization, encode and decode.

EnCodec quantizes each latent vector z with K codebooks in a row: the first quantizes z, every next one
quantizes what the previous levels left over,

    q_1 = Q_1(z),   q_k = Q_k(r_k)  with  r_k = r_{k−1} − q_{k−1} = z − (q_1 + ... + q_{k−1}),
    ẑ = Σ_k q_k,

so codebook 1 carries most of the information and each further codebook refines it: decoding with the
first k < K codebooks gives a coarser ẑ. Write `ResidualVectorQuantizer.encode` (z (B, D, T) -> codes
(B, k, T), k = n_q or K; it never updates a codebook) and `ResidualVectorQuantizer.decode` (codes
(B, k, T), k ≤ K -> ẑ (B, D, T), the sum of the first k levels' vectors) in rvq.py. Each level is a
VectorQuantizer in self.layers: `layer.assign(rows)` gives the nearest entries of (M, D) rows,
`layer.decode(codes)` turns (B, T) codes into vectors (B, D, T).
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import rvq
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=3, title="Residual vector quantization: encode and decode", section="§2.1",
    blanks=[("rvq.py", "ResidualVectorQuantizer.encode"), ("rvq.py", "ResidualVectorQuantizer.decode")],
    hints=["encode: start with residual = z; for each layer in self.layers[:n_q or self.n_q], assign the rows "
           "residual.transpose(1, 2).reshape(-1, D), view the indices as (B, T), then subtract that level's "
           "vectors, layer.decode(codes), from the residual.",
           "Subtract from the running residual, r ← r − q_k, not from z: level 3 quantizes z − q_1 − q_2. "
           "torch.stack(codes, dim=1) makes the list of (B, T) codes (B, k, T).",
           "decode: k = codes.shape[1]; sum layer i's vectors layer.decode(codes[:, i]) over the first k layers "
           "(a sum, not a mean: ẑ = Σ_k q_k)."],
)

# Hand-made 1-D codebooks (D = 1, 4 entries each) and three latents z = 12.5, 27, 4 (B = 1, T = 3):
#   z = 12.5: level 1 -> 10 (entry 1), r = 2.5 -> 2 (entry 2), r = 0.5 -> 0.25 (entry 2);  ẑ = 12.25
#   z = 27:   level 1 -> 30 (entry 3), r = -3 -> -3 (entry 0), r = 0 -> 0.25 (entry 2);    ẑ = 27.25
#   z = 4:    level 1 -> 0 (entry 0),  r = 4 -> 5 (entry 3),   r = -1 -> -1 (entry 0);     ẑ = 4
# (Quantizing z itself at level 2 would pick entry 3 for 12.5; subtracting q_2 from z instead of from the
# running residual would give level 3 the value 10.5 for 12.5, entry 3.)
CODEBOOKS = [[0.0, 10.0, 20.0, 30.0], [-3.0, 0.0, 2.0, 5.0], [-1.0, -0.5, 0.25, 1.0]]
Z = torch.tensor([[[12.5, 27.0, 4.0]]])                    # (B, D, T) = (1, 1, 3)
CODES = torch.tensor([[[1, 3, 0], [2, 0, 3], [2, 2, 0]]])  # (B, K, T) = (1, 3, 3)
PARTIAL = [[10.0, 30.0, 0.0], [12.0, 27.0, 5.0], [12.25, 27.25, 4.0]]  # ẑ from the first 1, 2, 3 codebooks


def reference_assign(self, x):
    """The nearest entry by the definition (exercise 1's function, written out here)."""
    return ((x[:, None, :] - self.codebook[None]) ** 2).sum(-1).argmin(dim=1)


def reference_decode(self, codes):
    return self.codebook[codes].transpose(1, 2)


def reference_forward(self, x):
    """Exercise 2's function in eval form (no codebook update), should encode call the layers."""
    B, D, T = x.shape
    indices = reference_assign(self, x.detach().transpose(1, 2).reshape(-1, D))
    quantized = self.codebook[indices].view(B, T, D).transpose(1, 2)
    return x + (quantized - x).detach(), indices.view(B, T), F.mse_loss(x, quantized.detach())


def no_update(*args, **kwargs):
    raise Wrong("encode must never update a codebook (no init_kmeans, ema_update or revive_dead_codes): "
                "it only reads the codes of a trained quantizer")


@contextmanager
def reference_levels():
    """rvq.VectorQuantizer with its assign, decode and forward by definition, and updates refused."""
    cls = rvq.VectorQuantizer
    names = ("assign", "decode", "forward", "init_kmeans", "ema_update", "revive_dead_codes")
    saved = {name: cls.__dict__[name] for name in names}
    try:
        for name, value in zip(names, (reference_assign, reference_decode, reference_forward,
                                       no_update, no_update, no_update)):
            setattr(cls, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(cls, name, value)


def quantizer(codebooks):
    """A ResidualVectorQuantizer holding `codebooks` (K, V, D), initialised, in training mode (encode and
    decode must not care)."""
    codebooks = torch.as_tensor(codebooks, dtype=torch.float32)
    if codebooks.dim() == 2:
        codebooks = codebooks[..., None]  # 1-D entries
    K, V, D = codebooks.shape
    model = rvq.ResidualVectorQuantizer(dim=D, n_q=K, codebook_size=V)
    for layer, codebook in zip(model.layers, codebooks):
        layer.codebook.copy_(codebook)
        layer.cluster_size.fill_(10.0)
        layer.embed_sum.copy_(codebook * 10.0)
        layer.initialized.fill_(True)
    return model


def check_hand_made_levels():
    """Three 1-D codebooks by hand: each level's code is the nearest entry to the residual it is given."""
    with reference_levels():
        codes = quantizer(CODEBOOKS).encode(Z)
    if not isinstance(codes, torch.Tensor) or tuple(codes.shape) != (1, 3, 3):
        raise Wrong(f"encode should return codes (B, K, T) = (1, 3, 3), got {tuple(getattr(codes, 'shape', ()))}: "
                    "stack the levels' (B, T) codes on dim 1")
    if codes.dtype != torch.long:
        raise Wrong(f"codes must be int64, got {codes.dtype}")
    messages = ["level 1 quantizes z itself: its code is the nearest entry of codebook 1 to z",
                "is the residual of level 1 subtracted before level 2 quantizes (r_2 = z − q_1)?",
                "level 3 quantizes r_3 = z − q_1 − q_2: is each level's vector subtracted from the running "
                "residual (r ← r − q_k), not from z?"]
    for k in range(3):
        if not torch.equal(codes[0, k], CODES[0, k]):
            raise Wrong(f"codebook {k + 1} differs: got {codes[0, k].tolist()} for z = {Z[0, 0].tolist()}, "
                        f"expected {CODES[0, k].tolist()}; {messages[k]}")


def check_decode_sums_the_levels():
    """decode of hand-made codes: ẑ is the sum of the levels' entries, for k = 3, 2 and 1 codebooks."""
    with reference_levels():
        model = quantizer(CODEBOOKS)
        decoded = [model.decode(CODES[:, :k]) for k in (3, 2, 1)]
    for k, z_hat in zip((3, 2, 1), decoded):
        if not isinstance(z_hat, torch.Tensor) or tuple(z_hat.shape) != (1, 1, 3):
            raise Wrong(f"decode of codes (1, {k}, 3) should return ẑ (B, D, T) = (1, 1, 3), "
                        f"got {tuple(getattr(z_hat, 'shape', ()))}")
        expected = torch.tensor(PARTIAL[k - 1])
        if not torch.allclose(z_hat[0, 0], expected):
            if k > 1 and torch.allclose(z_hat[0, 0] * k, expected):
                raise Wrong(f"decode with {k} codebooks gives {z_hat[0, 0].tolist()}, expected {expected.tolist()}: "
                            "the levels' vectors are summed, ẑ = Σ_k q_k, not averaged")
            raise Wrong(f"decode with the first {k} codebooks gives {z_hat[0, 0].tolist()}, expected "
                        f"{expected.tolist()} = Σ of levels 1..{k}'s entries: level i reads codes[:, i] with "
                        "codebook i, and only the first k levels are summed")


def check_fewer_codebooks_are_coarser():
    """encode(z, n_q=k) keeps the first k levels, and the error of ẑ shrinks as codebooks are added."""
    with reference_levels():
        model = quantizer(CODEBOOKS)
        codes = model.encode(Z, n_q=2)
        full = model.encode(Z)
        errors = [float((model.decode(full[:, :k]) - Z).abs().sum()) for k in (1, 2, 3)]
    if tuple(codes.shape) != (1, 2, 3) or not torch.equal(codes, full[:, :2]):
        raise Wrong(f"encode(z, n_q=2) should return the first 2 codebooks' codes (1, 2, 3), the first two rows of "
                    f"encode(z), got {codes.tolist()}: loop over self.layers[:n_q or self.n_q]")
    # |z − ẑ| summed over the three latents, by the table above: 2.5 + 3 + 4, 0.5 + 0 + 1, 0.25 + 0.25 + 0.
    if any(abs(got - expected) > 1e-5 for got, expected in zip(errors, (9.5, 1.5, 0.5))):
        raise Wrong(f"the reconstruction errors with 1, 2, 3 codebooks are {errors}, expected [9.5, 1.5, 0.5]: "
                    "each added level should refine ẑ")


def check_matches_greedy_definition():
    """Random 3-D latents, B = 2, T = 4, three codebooks: codes and ẑ equal a vector-by-vector greedy loop."""
    generator = torch.Generator().manual_seed(0)
    codebooks = torch.randn(3, 8, 3, generator=generator) * torch.tensor([4.0, 1.0, 0.25])[:, None, None]
    z = 4 * torch.randn(2, 3, 4, generator=generator)  # (B, D, T)
    with reference_levels():
        model = quantizer(codebooks)
        before = [layer.codebook.clone() for layer in model.layers]
        codes = model.encode(z)
        z_hat = model.decode(codes)
    expected_codes, expected_hat = torch.zeros(2, 3, 4, dtype=torch.long), torch.zeros(2, 3, 4)
    for b in range(2):
        for t in range(4):
            residual = z[b, :, t].clone()
            for k in range(3):
                j = int(((residual - codebooks[k]) ** 2).sum(1).argmin())
                expected_codes[b, k, t] = j
                expected_hat[b, :, t] += codebooks[k, j]
                residual = residual - codebooks[k, j]
    if tuple(codes.shape) != (2, 3, 4):
        raise Wrong(f"codes should be (B, K, T) = (2, 3, 4), got {tuple(codes.shape)}")
    wrong = (codes != expected_codes).nonzero()
    if len(wrong):
        b, k, t = wrong[0].tolist()
        raise Wrong(f"codes[{b}, {k}, {t}] is {int(codes[b, k, t])}, the greedy residual quantization of the vector "
                    f"z[{b}, :, {t}] gives {int(expected_codes[b, k, t])}: each level quantizes that vector's running "
                    "residual; are the rows made (B, D, T) -> (B, T, D) -> (B·T, D) (transpose(1, 2) before "
                    "reshape), and the indices viewed back as (B, T)?")
    if any(not torch.equal(layer.codebook, old) for layer, old in zip(model.layers, before)):
        raise Wrong("encode changed a codebook: it must only read the codes of a trained quantizer")
    if tuple(z_hat.shape) != (2, 3, 4) or not torch.allclose(z_hat, expected_hat, atol=1e-5):
        raise Wrong("decode(encode(z)) differs from the sum of the chosen entries per vector, ẑ[b, :, t] = "
                    "Σ_k e_k[codes[b, k, t]]: is layer.decode's (B, D, T) output summed without reshaping?")
