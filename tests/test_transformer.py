"""Tests for transformer.py: causality, KV-cache decoding == full pass, positions with an offset,
hand-written attention == SDPA, and the fully-masked (null) condition giving zeros, never NaN."""
import math

import pytest
import torch

import transformer
from transformer import KVCache, Transformer, attention, causal_mask, sinusoidal_positions

D, H, FFN, LAYERS = 32, 4, 64, 2
B, S, L = 2, 12, 5
IMPLS = ("sdpa", "manual")


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    """Run the test once with each attention kernel (the module-level switch)."""
    monkeypatch.setattr(transformer, "ATTENTION", request.param)
    return request.param


def make_model(cross_attention=True, causal=True, seed=0):
    torch.manual_seed(seed)
    return Transformer(D, LAYERS, H, FFN, cross_attention=cross_attention, causal=causal).eval()


def make_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, D, generator=g)
    condition = torch.randn(B, L, D, generator=g)
    condition_mask = torch.tensor([[True, True, True, False, False],  # item 0: 3 real tokens, 2 padding
                                   [True, True, True, True, True]])
    return x, condition, condition_mask


def test_only_the_layer_norms_have_a_bias():
    """As the reference: bias-free linear layers, LayerNorms with a gain and a bias."""
    model = make_model()
    names = [name for name, _ in model.named_parameters()]
    norms = {name for name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)}
    assert names and all(name.rsplit(".", 1)[0] in norms for name in names if name.endswith("bias"))
    assert all(f"{norm}.bias" in names for norm in norms)


def test_sinusoidal_positions_by_hand():
    # D = 4: frequencies 10000^(-0/(2-1)) = 1 and 10000^(-1/(2-1)) = 1e-4; layout [cos, cos, sin, sin].
    pe = sinusoidal_positions(torch.tensor([0, 2]), 4)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                             [math.cos(2), math.cos(2e-4), math.sin(2), math.sin(2e-4)]])
    assert torch.allclose(pe, expected, atol=1e-6)
    batched = sinusoidal_positions(torch.tensor([[0, 2], [5, 6]]), 4)
    assert batched.shape == (2, 2, 4) and torch.allclose(batched[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positions(torch.arange(3), 5)


def test_causal_mask_for_queries_after_a_cache():
    # 2 new queries after 3 cached steps: they sit at steps 3 and 4.
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False],
                                          [True, True, True, True, True]]


def test_output_at_t_does_not_depend_on_later_inputs(impl):
    model = make_model()
    x, condition, condition_mask = make_inputs()
    x.requires_grad_(True)
    out = model(x, condition, condition_mask)
    # A random read-out (a plain .sum() of a LayerNorm output is constant: its gradient is ~0).
    readout = torch.randn(D, generator=torch.Generator().manual_seed(2))
    for t in (0, 5, S - 1):
        (grad,) = torch.autograd.grad(out[:, t] @ readout, x, grad_outputs=torch.ones(B), retain_graph=True)
        assert (grad[:, t + 1:] == 0).all(), f"output {t} sees the future"
        assert (grad[:, :t + 1].abs().sum(dim=-1) > 0).all(), f"output {t} ignores part of its past"


@pytest.mark.parametrize("chunks", [[1] * S, [3] * 4, [5, 5, 2], [7] + [1] * 5])
def test_cached_decoding_equals_the_full_pass(impl, chunks):
    model = make_model()
    x, condition, condition_mask = make_inputs()
    with torch.no_grad():
        full = model(x, condition, condition_mask)
        cache, outs, start = KVCache(), [], 0
        for size in chunks:
            outs.append(model(x[:, start:start + size], condition, condition_mask, cache=cache))
            start += size
            assert cache.length == start
    assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-5)


def test_one_step_at_a_time_past_buffer_growth_with_null_and_padded_conditions_equals_the_full_pass(impl):
    """150 single steps: the cache's buffers double twice (64 -> 128 -> 300 steps); the batch holds a
    padded description, a full one and the null condition (all masked), which the cache prepares once."""
    model = make_model()
    g = torch.Generator().manual_seed(2)
    x, condition = torch.randn(3, 150, D, generator=g), torch.randn(3, L, D, generator=g)
    condition_mask = torch.tensor([[True, True, False, False, False], [True] * L, [False] * L])
    with torch.no_grad():
        full = model(x, condition, condition_mask)
        cache = KVCache()
        steps = [model(x[:, s:s + 1], condition, condition_mask, cache=cache) for s in range(150)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    assert cache.layers[0].key_buffer.shape[2] >= 150 and cache.length == 150


def test_the_cache_prepares_the_null_condition_once():
    """Rows without any key get zero values and an all-True mask; an all-True mask is dropped."""
    cache = transformer.LayerCache()
    keys, values = torch.randn(2, H, L, D // H), torch.randn(2, H, L, D // H)
    mask = torch.tensor([[True] * L, [False] * L])[:, None, None, :]  # (B, 1, 1, L): a description, the null
    _, stored_values, stored_mask = cache.set_condition(keys, values, mask)
    assert stored_mask is None  # nothing left to mask: SDPA's unmasked path
    assert torch.equal(stored_values[0], values[0]) and (stored_values[1] == 0).all()
    padded = torch.tensor([[True, False, False, False, False], [False] * L])[:, None, None, :]
    _, _, stored_mask = cache.set_condition(keys, values, padded)
    assert stored_mask[0, 0, 0].tolist() == [True, False, False, False, False] and stored_mask[1].all()


def test_condition_is_read_once_then_served_from_the_cache():
    model = make_model()
    x, condition, condition_mask = make_inputs()
    with torch.no_grad():
        full = model(x, condition, condition_mask)
        cache = KVCache()
        first = model(x[:, :4], condition, condition_mask, cache=cache)
        rest = model(x[:, 4:], cache=cache)  # no condition passed: its K/V are cached
    assert torch.allclose(torch.cat([first, rest], dim=1), full, atol=1e-5)


def test_explicit_offset_continues_positions_like_one_pass():
    model = make_model()
    x, condition, condition_mask = make_inputs()
    with torch.no_grad():
        full = model(x, condition, condition_mask)
        # The positions matter: shifting them changes the output.
        assert not torch.allclose(model(x, condition, condition_mask, offset=3), full, atol=1e-3)
        # First part, then the last part with an explicit offset: the same as one pass.
        cache = KVCache()
        model(x[:, :8], condition, condition_mask, cache=cache)
        last = model(x[:, 8:], condition, condition_mask, cache=cache, offset=8)
        assert torch.allclose(last, full[:, 8:], atol=1e-5)
        # A sequence placed at positions 7.. in one pass == chunks whose first call says offset=7.
        shifted = model(x, condition, condition_mask, offset=7)
        cache = KVCache()
        head = model(x[:, :5], condition, condition_mask, cache=cache, offset=7)
        tail = torch.cat([model(x[:, t:t + 1], cache=cache) for t in range(5, S)], dim=1)
        assert cache.start == 7
        assert torch.allclose(torch.cat([head, tail], dim=1), shifted, atol=1e-5)


def test_manual_attention_equals_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (6, 9, 9))
    masks = {
        "none": None,
        "random (with one fully masked row)": torch.rand(2, 1, 6, 9, generator=g) > 0.5,
        "causal after a cache": causal_mask(6, 9),
        "key padding": torch.tensor([[True] * 4 + [False] * 5, [False] * 9])[:, None, None, :],
    }
    masks["random (with one fully masked row)"][0, 0, 2] = False
    for name, mask in masks.items():
        manual = attention(q, k, v, mask, impl="manual")
        fused = attention(q, k, v, mask, impl="sdpa")
        assert torch.isfinite(manual).all() and torch.isfinite(fused).all(), name
        assert torch.allclose(manual, fused, atol=1e-5), name
    square = torch.randn(2, 3, 6, 8, generator=g)
    assert torch.allclose(attention(square, square, square, is_causal=True, impl="manual"),
                          attention(square, square, square, is_causal=True, impl="sdpa"), atol=1e-5)


def test_manual_attention_is_the_equation():
    """softmax(QK^T/sqrt(d)) V computed by hand on a tiny example with one masked key."""
    q = torch.tensor([[[[1.0, 0.0]]]])                           # (1, 1, 1, 2)
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]]])  # (1, 1, 3, 2)
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]]])
    mask = torch.tensor([[True, True, False]])  # (Sq=1, Sk=3)
    w = torch.softmax(torch.tensor([1.0, 0.0]) / math.sqrt(2), dim=0)
    expected = w[0] * v[0, 0, 0] + w[1] * v[0, 0, 1]
    for impl in IMPLS:
        assert torch.allclose(attention(q, k, v, mask, impl=impl)[0, 0, 0], expected, atol=1e-6)


def test_both_kernels_give_the_same_model_output(monkeypatch):
    model = make_model()
    x, condition, condition_mask = make_inputs()
    outputs = {}
    for impl in IMPLS:
        monkeypatch.setattr(transformer, "ATTENTION", impl)
        with torch.no_grad():
            outputs[impl] = model(x, condition, condition_mask)
    assert torch.allclose(outputs["sdpa"], outputs["manual"], atol=1e-5)


def test_the_pitfall_is_real_naive_softmax_of_a_fully_masked_row_is_nan():
    """Why `attention` special-cases rows with no key: the textbook formula gives 0/0 there."""
    all_masked_scores = torch.full((1, 3), float("-inf"))  # every key masked: M = -inf everywhere
    assert torch.isnan(all_masked_scores.softmax(dim=-1)).all()
    q, k, v = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    for impl in IMPLS:
        assert torch.equal(attention(q, k, v, torch.zeros(1, 3, dtype=torch.bool), impl=impl), torch.zeros(1, 1, 1, 4))


def test_fully_masked_condition_is_exactly_no_cross_attention(impl):
    """The null condition of CFG: finite, and equal to skipping cross-attention, in values and grads."""
    model = make_model()
    x, condition, _ = make_inputs()
    null_mask = torch.zeros(B, L, dtype=torch.bool)
    out = model(x, condition, null_mask)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, model(x, None, None), atol=1e-6)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # The same null rows step by step through the cache.
    with torch.no_grad():
        cache = KVCache()
        steps = torch.cat([model(x[:, t:t + 1], condition, null_mask, cache=cache) for t in range(S)], dim=1)
    assert torch.allclose(steps, out.detach(), atol=1e-5)


def test_null_condition_is_a_no_op_only_for_its_own_batch_item(impl):
    """One batch of 2 as in CFG: item 0 null, item 1 a real condition."""
    model = make_model()
    x, condition, _ = make_inputs()
    mask = torch.tensor([[False] * L, [True, True, False, False, False]])
    with torch.no_grad():
        out, unconditioned = model(x, condition, mask), model(x, None, None)
    assert torch.allclose(out[0], unconditioned[0], atol=1e-6)
    assert not torch.allclose(out[1], unconditioned[1], atol=1e-3)


def test_masked_condition_vectors_are_ignored(impl):
    model = make_model()
    x, condition, condition_mask = make_inputs()
    changed = condition.clone()
    changed[~condition_mask] = 1e3 * torch.randn(int((~condition_mask).sum()), D)
    with torch.no_grad():
        assert torch.allclose(model(x, condition, condition_mask), model(x, changed, condition_mask), atol=1e-6)
        changed[0, 0] += 1.0  # a real token: it must matter
        assert not torch.allclose(model(x, condition, condition_mask), model(x, changed, condition_mask), atol=1e-4)


def test_self_attention_padding_mask_hides_padded_steps(impl):
    """For a non-causal encoder (e.g. a text encoder) over a padded batch."""
    model = make_model(cross_attention=False, causal=False)
    x, _, _ = make_inputs()
    padding = torch.ones(B, S, dtype=torch.bool)
    padding[0, 8:] = False
    changed = x.clone()
    changed[0, 8:] = torch.randn(S - 8, D)
    with torch.no_grad():
        assert torch.allclose(model(x, padding_mask=padding)[0, :8], model(changed, padding_mask=padding)[0, :8],
                              atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    model = make_model()
    x, condition, condition_mask = make_inputs()
    with pytest.raises(ValueError, match="x must be"):
        model(x[..., :-1])
    with pytest.raises(ValueError, match="condition must be"):
        model(x, condition[:1])
    with pytest.raises(ValueError, match="condition_mask must be"):
        model(x, condition, condition_mask[:, :2])
    with pytest.raises(ValueError, match="no cross-attention"):
        make_model(cross_attention=False)(x, condition)
    with pytest.raises(ValueError, match="divisible"):
        Transformer(30, 1, 4, 8)
