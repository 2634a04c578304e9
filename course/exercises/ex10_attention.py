"""Exercise 10 (§2.3, the transformer): scaled dot-product attention with a mask.

Every layer of the decoder attends twice: causally to the past steps (self-attention) and to the text
(cross-attention, with the padding of the shorter descriptions masked). Both are Vaswani et al.'s
(2017, eq. 1)

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V,     M = 0 where attending is allowed, −∞ where not,

per head, d_k = Dh the head width. Write `manual_attention` in transformer.py: q (B, H, Sq, Dh), k, v
(B, H, Sk, Dh), and `mask` a bool tensor broadcastable to (B, H, Sq, Sk) with True = may attend (or None:
attend to every key); it returns (B, H, Sq, Dh). The softmax runs over the keys. You may assume every
query row may attend to at least one key (dot_product_attention, its caller, sees to it).
"""
import math

import torch

import transformer
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=10, title="Attention with a mask", section="§2.3",
    blanks=[("transformer.py", "manual_attention")],
    hints=["The scores are q @ k.transpose(-2, -1), (B, H, Sq, Sk), divided by √Dh = math.sqrt(q.shape[-1]).",
           "M is −∞ where the mask is False: scores.masked_fill(~mask, float('-inf')); True means the "
           "query may attend to that key. A mask of shape (Sq, Sk) or (B, 1, 1, Sk) broadcasts.",
           "softmax over the keys (dim=-1), then a weighted sum of the values: weights @ v."],
)


def reference_form(q, k, v, mask=None):
    """softmax(QKᵀ/√d + M)V by its definition, written with einsum (the check's own, to compare against)."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        allowed = mask.expand_as(scores)
        scores = torch.where(allowed, scores, torch.full_like(scores, -1e30))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v)


def check_hand_computed_example():
    """Dh = 4, two keys: scores [0, ln 3] after the 1/√4 give weights [1/4, 3/4]; a zero query gets [1/2, 1/2]."""
    q = torch.tensor([[2.0, 0, 0, 0], [0.0, 0, 0, 0]])[None, None]           # (1, 1, 2, 4)
    k = torch.tensor([[0.0, 0, 0, 0], [math.log(3.0), 0, 0, 0]])[None, None]  # (1, 1, 2, 4)
    v = torch.tensor([[4.0, 0, 0, 0], [0.0, 8, 0, 0]])[None, None]
    got = transformer.manual_attention(q, k, v)
    if not isinstance(got, torch.Tensor) or got.shape != (1, 1, 2, 4):
        raise Wrong(f"q (1, 1, 2, 4) with k, v (1, 1, 2, 4) should give (B, H, Sq, Dh) = (1, 1, 2, 4), "
                    f"got {getattr(got, 'shape', type(got))}")
    # query 0: 2·ln3 / √4 = ln 3 -> softmax([0, ln 3]) = [1/4, 3/4] -> 1/4·[4, 0] + 3/4·[0, 8] = [1, 6]
    # query 1: scores [0, 0] -> [1/2, 1/2] -> [2, 4]
    expected = torch.tensor([[1.0, 6.0, 0, 0], [2.0, 4.0, 0, 0]])
    if torch.allclose(got[0, 0], expected, atol=1e-5):
        return
    rows = [[round(x, 4) for x in row] for row in got[0, 0].tolist()]
    weights = got[0, 0, :, 0] / 4 + got[0, 0, :, 1] / 8  # each query's two weights, summed (v0 = 4·e0, v1 = 8·e1)
    if not torch.allclose(weights, torch.ones(2), atol=1e-4):
        raise Wrong(f"got {rows}: the weights of a query sum to {[round(w, 3) for w in weights.tolist()]}, not 1; "
                    "is the softmax over the queries? It runs over the keys, the last axis (dim=-1)")
    raise Wrong(f"got {rows}, expected {expected.tolist()}: query 0's weights are softmax([0, 2·ln3/√4]) = [1/4, 3/4] "
                "and the zero query's are [1/2, 1/2]")


def check_scale_is_one_over_sqrt_dh():
    """Dh = 9: a raw score of 3·ln 2 becomes ln 2 after the 1/√9, so the weights are [1/3, 2/3]."""
    q = torch.zeros(1, 1, 1, 9)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 2, 9)
    k[0, 0, 1, 0] = 3 * math.log(2.0)
    v = torch.zeros(1, 1, 2, 9)
    v[0, 0, 0, 0], v[0, 0, 1, 1] = 3.0, 3.0   # the output's features 0 and 1 are 3 × the two weights
    got = transformer.manual_attention(q, k, v)[0, 0, 0, :2] / 3
    weight = float(got[1])
    if abs(weight - 2 / 3) < 1e-5 and abs(float(got[0]) - 1 / 3) < 1e-5:
        return
    if abs(weight - 8 / 9) < 1e-4:
        raise Wrong(f"the weights are {got.tolist()} = softmax([0, 3 ln 2]), expected [1/3, 2/3]: the scores "
                    "are not divided by √d_k = √Dh (here 3)")
    if abs(weight - 2 ** (1 / 3) / (1 + 2 ** (1 / 3))) < 1e-4:
        raise Wrong(f"the weights are {got.tolist()}, expected [1/3, 2/3]: the scores are divided by Dh = 9, "
                    "i.e. a 1/d scale; the paper's is 1/√d_k (here 1/3)")
    raise Wrong(f"the weights are {got.tolist()}, expected [1/3, 2/3] (raw scores [0, 3 ln 2] divided by √Dh = 3; "
                "Dh is the last dimension of q, not the number of keys or queries)")


def check_causal_mask_hides_the_future():
    """With causal_mask, changing the keys/values of steps 4-5 leaves the outputs of steps 0-3 unchanged."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 8, generator=generator) for _ in range(3))
    mask = transformer.causal_mask(6, 6)  # (6, 6), True = may attend
    out = transformer.manual_attention(q, k, v, mask)
    if out.shape != (2, 2, 6, 8):
        raise Wrong(f"q, k, v (2, 2, 6, 8) with a (6, 6) mask should give (2, 2, 6, 8), got {tuple(out.shape)}")
    if torch.isnan(out).any():
        raise Wrong("the output has NaN: a row where every key is masked is softmax over −∞ only; is the mask "
                    "inverted? True = may attend, so −∞ goes where the mask is False (masked_fill(~mask, -inf))")
    if not torch.allclose(out[:, :, 0], v[:, :, 0], atol=1e-5):
        raise Wrong("step 0 may attend only to key 0, so its output is exactly v[..., 0, :]; it is not. Is the "
                    "mask applied with True = may attend (−∞ where the mask is False)?")
    changed_k, changed_v = k.clone(), v.clone()
    changed_k[:, :, 4:] = torch.randn(2, 2, 2, 8, generator=generator)
    changed_v[:, :, 4:] = torch.randn(2, 2, 2, 8, generator=generator)
    again = transformer.manual_attention(q, changed_k, changed_v, mask)
    if not torch.allclose(out[:, :, :4], again[:, :, :4], atol=1e-5):
        raise Wrong("changing the keys/values of steps 4 and 5 changed the outputs of steps 0-3: the future "
                    "leaks; the scores where the mask is False must be −∞ before the softmax")
    if not torch.allclose(out, reference_form(q, k, v, mask), atol=1e-5):
        raise Wrong("causal attention differs from softmax(QKᵀ/√d + M)V with M = −∞ above the diagonal")
    cached = transformer.manual_attention(q[:, :, 4:], k, v, transformer.causal_mask(2, 6))
    if not torch.allclose(cached, out[:, :, 4:], atol=1e-5):
        raise Wrong("the last 2 queries against all 6 keys (a (2, 6) mask, as with a KV cache) should equal rows "
                    "4-5 of the full pass; does the mask broadcast over (B, H, Sq, Sk)?")


def check_padding_mask_on_keys():
    """Cross-attention to padded text: masked keys get zero weight, whatever their values."""
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 3, 8, generator=generator)
    k, v = torch.randn(2, 2, 5, 8, generator=generator), torch.randn(2, 2, 5, 8, generator=generator)
    lengths = [5, 2]  # sample 0 has 5 text tokens, sample 1 only 2 (3 padded)
    mask = torch.tensor([[i < n for i in range(5)] for n in lengths])[:, None, None, :]  # (B, 1, 1, L)
    out = transformer.manual_attention(q, k, v, mask)
    if not torch.allclose(out[0], reference_form(q[:1], k[:1], v[:1])[0], atol=1e-5):
        raise Wrong("sample 0 has no padding, so it should attend to all 5 keys as with mask=None; does the "
                    "(B, 1, 1, L) mask broadcast over heads and queries, True = may attend?")
    alone = reference_form(q[1:], k[1:, :, :2], v[1:, :, :2])[0]  # sample 1 against its 2 real tokens only
    if not torch.allclose(out[1], alone, atol=1e-5):
        raise Wrong("sample 1 (2 real tokens, 3 padded) should equal attention over its first 2 keys alone: "
                    "the padded keys must get weight 0 (−∞ where the mask is False, before the softmax)")
    padded_v = v.clone()
    padded_v[1, :, 2:] = 1e3
    if not torch.allclose(transformer.manual_attention(q, k, padded_v, mask)[1], alone, atol=1e-4):
        raise Wrong("changing the values of sample 1's padded keys changed its output: masked keys must get "
                    "exactly zero weight")
    if not torch.allclose(transformer.manual_attention(q, k, v, None), reference_form(q, k, v), atol=1e-5):
        raise Wrong("with mask=None every key is attended to; the output differs from softmax(QKᵀ/√d)V")
