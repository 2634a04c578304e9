"""The causal transformer decoder of MusicGen (paper §2.3), with cross-attention and a KV cache.

The LM sums the K codebook embeddings of each pattern step into one vector and runs a plain
autoregressive transformer decoder over the S steps (§2.3). Each of its L layers is *pre-norm*
(LayerNorm before each sub-layer, the residual stream left untouched):

    x = x + SelfAttention(LN(x))                    causal: step s sees steps <= s only
    x = x + CrossAttention(LN(x), condition)        text conditioning (§2.4), with its padding mask
    x = x + FFN(LN(x)),  FFN(h) = W_2 GELU(W_1 h)   exact (erf) GELU
    output = LN(x)                                  a final LayerNorm

The linear layers have no bias; the LayerNorms (eps 1e-5) have one, as in the reference (audiocraft,
and HF transformers' MusicgenDecoder, which pretrained.py loads into this class). Attention logits are
scaled by Dh^-1/2. Positions are sinusoidal (max_period 10000, §2.3) and are *added* to the input at
absolute position offset + i, so that cached step-by-step decoding, prompt continuation and sliding
windows all give each step the position it would have had in one full pass.

Shape letters: B batch, S sequence steps (queries), L condition length, D model width (`dim`),
H heads, Dh = D / H head width; "Sk" is the number of keys (cached + new).

Data flow: (B, S, D) summed embeddings of lm.py ──Transformer(cross-attends to the text
(B, L, D))──▶ (B, S, D) ──K linear heads in lm.py──▶ logits.

Decoding speed. A cached step of the tiny LM takes about a millisecond on a CPU, mostly the fixed
cost of each torch call, not arithmetic. So the hot path avoids calls, never maths:
the cache writes new keys/values into preallocated buffers instead of re-concatenating the past
(`LayerCache`), W_K and W_V are one matrix (`to_kv`), the condition's null rows are prepared once
(`LayerCache.set_condition`), dropout is a check rather than a module, and positions come from a
table. Each change is exact (tests compare cached and full passes); NOTES.md has the figures. Three
operations have forms whose speed depends on the CPU (`Linear`, `GELU`, half-precision `attention`):
autotune.py picks among them by timing them on the machine; each form is tested equal to the plain one.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import autotune

# Which attention kernel to run: "sdpa" (torch's fused F.scaled_dot_product_attention, fast) or
# "manual" (the equation written out below, to read). tests/test_transformer.py shows they agree.
ATTENTION = "sdpa"


def sinusoidal_positions(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal position embeddings (Vaswani et al., 2017, §3.5; MusicGen §2.3), as the reference has them.

        PE(p)[i]         = cos(p · ω_i)      ω_i = max_period^(-i / (D/2 - 1)),   i = 0 .. D/2 - 1
        PE(p)[D/2 + i]   = sin(p · ω_i)

    Two differences from Vaswani's formula, both the reference's (audiocraft, HF transformers), which
    the published weights were trained with: cos half then sin half instead of interleaved, and the
    exponent divides by D/2 - 1, so the slowest frequency is exactly 1 / max_period.

    Args:
        positions: (S,) or (B, S) integer or float absolute positions.
        dim: D, even.
    Returns:
        (S, D) or (B, S, D) float32.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"dim must be even for sin/cos pairs, and at least 4, got {dim}")
    half = dim // 2
    # ω_i = exp(-i · ln(max_period) / (D/2 - 1)), computed as the reference does (exp of a float32 product)
    # so that the two tables agree to the last bit.
    exponent = torch.arange(half, dtype=torch.float32, device=positions.device) * -(math.log(max_period) / (half - 1))
    frequencies = torch.exp(exponent)  # (D/2,)
    phase = positions.to(torch.float32)[..., None] * frequencies  # (..., S) -> (..., S, D/2)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)  # (..., S, D/2) -> (..., S, D)


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """(Sq, Sk) bool, True = may attend. The queries are the *last* Sq of the Sk steps (the first
    Sk - Sq are already in the KV cache), so query i sits at step i + Sk - Sq and sees keys up to it."""
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n_queries)


def attention(q, k, v, mask=None, is_causal=False, impl=None):
    """Scaled dot-product attention, per head.

    Args:
        q: (B, H, Sq, Dh); k, v: (B, H, Sk, Dh).
        mask: bool, broadcastable to (B, H, Sq, Sk), True = may attend; or None (attend to all).
        is_causal: square causal attention (Sq == Sk, query i sees keys <= i); only without `mask`.
        impl: "sdpa" or "manual"; None reads the module-level switch ATTENTION.
    Returns:
        (B, H, Sq, Dh). A query row with no key to attend to returns exactly zeros.
    """
    impl = ATTENTION if impl is None else impl
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        # Half precision on a CPU: without bfloat16 arithmetic (AVX2) torch's kernels run it several
        # times slower than float32's, with it (AVX512-BF16, AMX) several times faster. autotune.py times
        # both on this machine, per number of heads and queries and per octave of keys (the cost grows
        # with the cache), and keeps the faster.
        key = ("attention", q.dtype, impl, *q.shape[:3], k.shape[2].bit_length(), mask is not None, is_causal)
        form = autotune.choose(key, HALF_ATTENTION_FORMS, q, k, v, mask, is_causal, impl)
        return HALF_ATTENTION_FORMS[form](q, k, v, mask, is_causal, impl)
    return dot_product_attention(q, k, v, mask, is_causal, impl)


def dot_product_attention(q, k, v, mask, is_causal, impl):
    """`attention` in the inputs' dtype (its arguments, impl given)."""
    if is_causal:
        if mask is not None or q.shape[2] != k.shape[2]:
            raise ValueError("is_causal is for square attention without a mask; pass causal_mask() instead")
    has_key = None
    if mask is not None:
        # Pitfall (reported in a popular port): a row whose keys are *all* masked - the null condition
        # of classifier-free guidance, an empty description - is softmax over all -inf = 0/0 = NaN in
        # the naive code, and in SDPA too on older torch versions and some backends (recent CPU kernels
        # return zeros; we do not rely on it). Through the gradients that NaN then spreads to every
        # weight. The right answer is "nothing to attend to, contribute nothing". So such rows are
        # allowed to attend to every key (finite, meaningless weights) and their output is zeroed below:
        # the value is exactly 0 and no NaN ever exists, neither forward nor backward.
        has_key = mask.any(dim=-1, keepdim=True)  # (.., Sq, Sk) -> (.., Sq, 1)
        mask = mask | ~has_key
    if impl == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    elif impl == "manual":
        out = manual_attention(q, k, v, causal_mask(q.shape[2], k.shape[2], q.device) if is_causal else mask)
    else:
        raise ValueError(f"attention impl must be 'sdpa' or 'manual', got {impl!r}")
    if has_key is not None:
        out = out.masked_fill(~has_key, 0.0)  # rows with no valid key contribute exactly nothing
    return out


def manual_attention(q, k, v, mask=None):
    """The paper's form (Vaswani et al., 2017, eq. 1), written out:

        Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V,   M = 0 where attending is allowed, −∞ where not.

    q (B, H, Sq, Dh), k, v (B, H, Sk, Dh); mask: bool broadcastable to (B, H, Sq, Sk), True = may
    attend, or None. A row must have at least one key it may attend to (dot_product_attention sees to
    it). Returns (B, H, Sq, Dh)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Sq, Dh) @ (B, H, Dh, Sk) -> (B, H, Sq, Sk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, H, Sq, Sk) @ (B, H, Sk, Dh) -> (B, H, Sq, Dh)


def attention_in_float32(q, k, v, mask, is_causal, impl):
    """`attention` of half-precision inputs computed in float32, the output cast back."""
    return dot_product_attention(q.float(), k.float(), v.float(), mask, is_causal, impl).to(q.dtype)


HALF_ATTENTION_FORMS = {"in its dtype": dot_product_attention, "in float32": attention_in_float32}  # plain first


class Linear(nn.Linear):
    """nn.Linear (same weight, same state-dict names), y = x·Wᵀ, with machine-dependent fast forms.

    A decoding step multiplies a few rows (2 with guidance) by every weight. At the real size its time is
    the time to read W; written as (W·xᵀ)ᵀ, the same products and sums read W in another order, and which
    order streams faster depends on the CPU and the dtype (an AVX2 CPU prefers (W·xᵀ)ᵀ in float32, an
    AVX-512 one x·Wᵀ in float32 and (W·xᵀ)ᵀ in bfloat16). At the tiny size the time is the call's fixed
    cost, which depends on the library torch hands the product to (oneDNN or its own kernels). So for
    at most 4 rows on a CPU, autotune.py times the forms once per shape and dtype on this machine and
    keeps the fastest; training (and GPUs) take nn.Linear's path."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def linear(x, weight, bias=None):
    """F.linear(x, W, b), x (..., in) -> (..., out); for at most 4 rows on a CPU in the form autotune.py
    measured fastest for this shape and dtype (transformer.Linear; the LM's stacked heads)."""
    if x.device.type != "cpu" or x.numel() > 4 * weight.shape[1]:
        return F.linear(x, weight, bias)
    form = autotune.choose(("linear", x.dtype, x.shape, weight.shape), LINEAR_FORMS, x, weight, bias)
    return LINEAR_FORMS[form](x, weight, bias)


def transposed_product(x, weight, bias):
    """(W·xᵀ)ᵀ + b, the value of F.linear(x, W, b) for x (..., in). Made contiguous (a copy of R·out
    numbers): what reads it next, e.g. the fused attention kernel, needs unit stride along the features,
    and a transposed view has stride R there."""
    rows = x.reshape(-1, x.shape[-1])                      # (..., in) -> (R, in)
    y = torch.mm(weight, rows.t()).t().contiguous()        # (out, in) @ (in, R) -> (out, R) -> (R, out)
    y = y if bias is None else y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])       # (R, out) -> (..., out)


LINEAR_FORMS = {"x·Wᵀ": F.linear, "(W·xᵀ)ᵀ": transposed_product,  # the plain form first
                "x·Wᵀ without oneDNN": autotune.without_onednn(F.linear),
                "(W·xᵀ)ᵀ without oneDNN": autotune.without_onednn(transposed_product)}


class GELU(nn.GELU):
    """nn.GELU (exact: x·Φ(x), Φ the standard normal CDF). On a CPU torch may run it in oneDNN, whose fixed
    cost per call is several times the work on a decoding step's few thousand values: autotune.py times
    it with and without oneDNN, per dtype and octave of size, and keeps the faster."""

    def forward(self, x):
        if x.device.type != "cpu":
            return super().forward(x)
        form = autotune.choose(("gelu", x.dtype, x.numel().bit_length()), GELU_FORMS, x)
        return GELU_FORMS[form](x)


GELU_FORMS = {"F.gelu": F.gelu, "F.gelu without oneDNN": autotune.without_onednn(F.gelu)}


class MultiHeadAttention(nn.Module):
    """Projections around `attention`: Q from the queries' stream, K/V from a source (itself or the
    condition), H heads of width Dh = D / H, an output projection. No biases (as the reference)."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.to_q = Linear(dim, dim, bias=False)
        # W_K and W_V side by side in one (2D, D) matrix: one matmul instead of two per step (decoding a
        # step is mostly per-call overhead on a CPU), the same maths as two separate projections.
        self.to_kv = Linear(dim, 2 * dim, bias=False)
        self.to_out = Linear(dim, dim, bias=False)

    def split_heads(self, x):
        B, S, D = x.shape
        return x.view(B, S, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, S, D) -> (B, H, S, Dh)

    def keys_values(self, source):
        """source (B, Sk, D) -> keys, values, each (B, H, Sk, Dh): what a KV cache stores."""
        keys, values = self.to_kv(source).chunk(2, dim=-1)  # (B, Sk, D) -> (B, Sk, 2D) -> 2 x (B, Sk, D)
        return self.split_heads(keys), self.split_heads(values)

    def forward(self, x, keys, values, mask=None, is_causal=False):
        """x (B, S, D) attends to keys/values (B, H, Sk, Dh) -> (B, S, D)."""
        B, S, D = x.shape
        out = attention(self.split_heads(self.to_q(x)), keys, values, mask, is_causal)  # (B, H, S, Dh)
        return self.to_out(out.transpose(1, 2).reshape(B, S, D))  # (B, H, S, Dh) -> (B, S, D)


class LayerCache:
    """What one layer keeps between decoding steps.

    The self-attention keys/values of past steps live in preallocated buffers that double when full:
    appending a step writes it in place. (The obvious `torch.cat([past, new])` copies the whole past at
    every step, a fifth of a cached step's time at 4 s.)
    """

    def __init__(self):
        self.length = 0              # steps held
        self.key_buffer = None       # (B, H, capacity, Dh), the first `length` steps valid
        self.value_buffer = None     # (B, H, capacity, Dh)
        self.cross_keys = None       # (B, H, L, Dh) from the condition, computed on the first call
        self.cross_values = None     # (B, H, L, Dh)
        self.cross_mask = None       # (B, 1, 1, L) bool or None

    def append(self, keys, values):
        """Add the new steps' keys/values (B, H, S, Dh); return all held so far, 2 x (B, H, length, Dh)."""
        B, H, S, Dh = keys.shape
        end = self.length + S
        if self.key_buffer is None or end > self.key_buffer.shape[2]:
            capacity = max(64, 2 * end)  # doubling: each step is copied O(1) times on average
            grown_keys, grown_values = keys.new_empty(B, H, capacity, Dh), values.new_empty(B, H, capacity, Dh)
            if self.length:
                grown_keys[:, :, :self.length] = self.key_buffer[:, :, :self.length]
                grown_values[:, :, :self.length] = self.value_buffer[:, :, :self.length]
            self.key_buffer, self.value_buffer = grown_keys, grown_values
        self.key_buffer[:, :, self.length:end] = keys  # in place: the past is not copied
        self.value_buffer[:, :, self.length:end] = values
        self.length = end
        return self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]

    def set_condition(self, keys, values, mask):
        """Store the cross-attention keys/values (B, H, L, Dh) and mask (B, 1, 1, L) | None, prepared
        once for all the steps to come; returns what is stored.

        A row with no key at all (the null condition of CFG) must add exactly 0; `attention` ensures it
        with a few extra ops per call. Here it is done once: such a row's values are set to 0 and it
        may attend to every key, so its output is a weighted sum of zeros = 0. A mask that then allows
        everything is dropped, which lets SDPA take its unmasked path (e.g. CFG with one description).
        """
        if mask is not None:
            has_key = mask.any(dim=-1, keepdim=True)  # (B, 1, 1, L) -> (B, 1, 1, 1)
            values = values * has_key                  # (B, H, L, Dh), zero for the rows without a key
            mask = mask | ~has_key
            mask = None if bool(mask.all()) else mask
        self.cross_keys, self.cross_values, self.cross_mask = keys, values, mask
        return keys, values, mask


class KVCache:
    """Per-layer keys/values of the steps already processed, so each new step costs O(S), not O(S^2).

    Self-attention K/V grow by the new steps at each call; the cross-attention K/V depend only on the
    condition, so they are computed once on the first call and reused. `start` is the absolute position
    of the first cached step; a call without an explicit offset continues at `start + length`.
    Decoding only: the buffers are written in place, which autograd cannot differentiate through.
    """

    def __init__(self):
        self.layers: list = []  # one LayerCache per transformer layer, created on the first call
        self.start = 0

    @property
    def length(self) -> int:
        """Number of steps held (0 before the first call)."""
        return self.layers[0].length if self.layers else 0


class DecoderBlock(nn.Module):
    """One pre-norm layer: causal self-attention, optional cross-attention, GELU FFN (§2.3)."""

    def __init__(self, dim, n_heads, ffn_dim, cross_attention=True, causal=True, dropout=0.0):
        super().__init__()
        self.causal = causal
        self.norm_self = nn.LayerNorm(dim)  # with a bias, eps 1e-5: the reference's
        self.self_attention = MultiHeadAttention(dim, n_heads)
        self.norm_cross = nn.LayerNorm(dim) if cross_attention else None
        self.cross_attention = MultiHeadAttention(dim, n_heads) if cross_attention else None
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(Linear(dim, ffn_dim, bias=False), GELU(), Linear(ffn_dim, dim, bias=False))
        self.dropout = dropout  # probability on each residual branch; 0 by default

    def drop(self, branch):
        """Dropout on a residual branch, in training only. (A plain check, not an nn.Dropout module: a
        module call per branch and step is a measurable share of decoding one step at a time.)"""
        return F.dropout(branch, self.dropout) if self.training and self.dropout > 0 else branch

    def forward(self, x, condition=None, condition_mask=None, padding_mask=None, layer_cache=None):
        """x (B, S, D); condition (B, L, D) | None; condition_mask (B, L) bool | None;
        padding_mask (B, Sk) bool over the self-attention keys | None; layer_cache | None -> (B, S, D)."""
        # ---- self-attention over the past (and, with a cache, over the cached past) ----
        h = self.norm_self(x)
        keys, values = self.self_attention.keys_values(h)  # (B, S, D) -> 2 x (B, H, S, Dh)
        if layer_cache is not None:
            keys, values = layer_cache.append(keys, values)  # (B, H, S, Dh) -> (B, H, S_cached + S, Dh)
        n_queries, n_keys = x.shape[1], keys.shape[2]
        mask, is_causal = None, False
        if self.causal and n_queries > 1:  # a single new step may see every cached step: no mask
            if n_queries == n_keys and padding_mask is None:
                is_causal = True  # lets SDPA use its fused causal kernel
            else:
                mask = causal_mask(n_queries, n_keys, x.device)  # (S, Sk)
        if padding_mask is not None:
            key_mask = padding_mask[:, None, None, :]  # (B, Sk) -> (B, 1, 1, Sk)
            mask = key_mask if mask is None else mask & key_mask
        x = x + self.drop(self.self_attention(h, keys, values, mask, is_causal))

        # ---- cross-attention to the condition (text, §2.4) ----
        if self.cross_attention is not None:
            if layer_cache is not None and layer_cache.cross_keys is not None:  # computed on the first call
                cross_keys, cross_values = layer_cache.cross_keys, layer_cache.cross_values
                cross_mask = layer_cache.cross_mask
            elif condition is not None:
                cross_keys, cross_values = self.cross_attention.keys_values(condition)  # (B, L, D) -> 2 x (B, H, L, Dh)
                # (B, L) -> (B, 1, 1, L): one key mask shared by all heads and queries
                cross_mask = None if condition_mask is None else condition_mask[:, None, None, :]
                if layer_cache is not None:
                    cross_keys, cross_values, cross_mask = layer_cache.set_condition(cross_keys, cross_values,
                                                                                    cross_mask)
            else:
                cross_keys = None  # no condition at all: the sub-layer is skipped (the same as all-masked)
            if cross_keys is not None:
                # A fully masked condition row attends to nothing and adds exactly 0 (see `attention`).
                x = x + self.drop(self.cross_attention(self.norm_cross(x), cross_keys, cross_values, cross_mask))

        # ---- position-wise feed-forward ----
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class Transformer(nn.Module):
    """A stack of pre-norm decoder blocks with sinusoidal positions and a final LayerNorm (§2.3).

    Args:
        dim: D, model width (paper, small: 1024).
        n_layers: number of blocks (paper, small: 24).
        n_heads: H (paper, small: 16).
        ffn_dim: hidden width of the FFN (paper, small: 4096).
        cross_attention: whether blocks cross-attend to a condition sequence (text).
        causal: step s attends to steps <= s only (False: e.g. for a text encoder).
        dropout: probability on the residual branches; 0 by default (no dropout).
    """

    def __init__(self, dim, n_layers, n_heads, ffn_dim, cross_attention=True, causal=True, dropout=0.0):
        super().__init__()
        self.dim = dim
        self.has_cross_attention = cross_attention
        self.blocks = nn.ModuleList(DecoderBlock(dim, n_heads, ffn_dim, cross_attention, causal, dropout)
                                    for _ in range(n_layers))
        self.norm_out = nn.LayerNorm(dim)
        self.position_table = torch.zeros(0, dim)  # sinusoidal_positions(0..n-1), extended on demand
        self.checkpoint_activations = False  # recompute each block in backward instead of storing (fine-tuning)

    def positions(self, offset: int, S: int, device) -> torch.Tensor:
        """(S, D) position embeddings of offset..offset+S-1, read from a table that is recomputed only
        when a longer one (or another device) is needed: sin/cos at every decoding step is measurable."""
        end = offset + S
        if end > self.position_table.shape[0] or self.position_table.device != torch.device(device):
            self.position_table = sinusoidal_positions(torch.arange(max(end, 256), device=device), self.dim)
        return self.position_table[offset:end]

    def forward(self, x, condition=None, condition_mask=None, cache=None, offset=None, padding_mask=None):
        """Run the decoder on new steps.

        Args:
            x: (B, S, D) input vectors of the new steps (positions are added here).
            condition: (B, L, D) sequence to cross-attend to, or None. With a cache it is only read on
                the first call (its K/V are then cached); later calls may pass it again or omit it.
            condition_mask: (B, L) bool, True = real token; None = all real. An all-False row (the
                null condition) makes cross-attention a no-op for that batch item.
            cache: KVCache for step-by-step decoding, or None for a full pass.
            offset: absolute position of x[:, 0]; default: where the cache left off (0 without one).
            padding_mask: (B, Sk) bool over the self-attention keys (cached + new), True = real; for
                padded batches (e.g. a text encoder). None = all real.
        Returns:
            (B, S, D).
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, S, D={self.dim}), got {tuple(x.shape)}")
        B, S, D = x.shape
        if condition is not None:
            if not self.has_cross_attention:
                raise ValueError("a condition was given but this Transformer has no cross-attention")
            if condition.dim() != 3 or condition.shape[0] != B or condition.shape[2] != D:
                raise ValueError(f"condition must be (B={B}, L, D={D}), got {tuple(condition.shape)}")
            if condition_mask is not None and tuple(condition_mask.shape) != tuple(condition.shape[:2]):
                raise ValueError(f"condition_mask must be (B, L)={tuple(condition.shape[:2])}, "
                                 f"got {tuple(condition_mask.shape)}")
        if condition_mask is not None:
            condition_mask = condition_mask.bool()
        if padding_mask is not None:
            padding_mask = padding_mask.bool()
        if cache is not None:
            if not cache.layers:
                cache.layers = [LayerCache() for _ in self.blocks]
            if len(cache.layers) != len(self.blocks):
                raise ValueError(f"cache has {len(cache.layers)} layers, the model {len(self.blocks)}")
            if offset is None:
                offset = cache.start + cache.length  # continue the positions where the cache stopped
            if cache.length == 0:
                cache.start = offset
        offset = 0 if offset is None else offset
        # Absolute position of new step i is offset + i: the same position it has in one full pass.
        x = x + self.positions(offset, S, x.device).to(x.dtype)  # (S, D) broadcast over B
        for i, block in enumerate(self.blocks):
            if self.checkpoint_activations and cache is None and torch.is_grad_enabled():
                # Activation checkpointing: keep each block's input only and recompute its inside in the
                # backward pass (the same dropout masks: the RNG state is replayed). Training memory falls
                # from every layer's activations to one layer's, for one more forward pass of compute.
                x = torch.utils.checkpoint.checkpoint(block, x, condition, condition_mask, padding_mask, None,
                                                      use_reentrant=False)
            else:
                x = block(x, condition, condition_mask, padding_mask, None if cache is None else cache.layers[i])
        return self.norm_out(x)

