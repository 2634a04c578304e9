"""Where the conditions enter the decoder (paper §2.4): the melody's chroma frames, and for the
published melody model the text too, stand as a prefix before the pattern steps.

Checked here: cached decoding with a prefix equals one full pass (the prefix goes in with the first
call only); the null melody (the chroma of a silent window) is exactly "no melody"; the prefix takes
positions 0..P-1 with the steps after it, attended causally (rebuilt by hand); the loss is on the
steps only; a short chroma is repeated to fill the window (the reference's fill), a long one cut;
text_fusion="prepend" puts [melody ; text] in the prefix with no cross-attention; gradients reach
the melody projection and the text encoder through the prefix; and MusicGen generates with a
prepend LM past one window, reproducibly, a silent melody giving the same audio as none.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from conditioners import Tokenizer
from musicgen import MusicGen
from encodec import EncodecModel
from test_musicgen import tiny_lm, FUSIONS, conditions, random_codes, CARD
from train import TINY_CODEC
from transformer import KVCache

PREPEND = [f for f in FUSIONS if f["melody_fusion"] == "prepend"]


def setup(fusions, B=2, T=10, **changes):
    """A tiny LM, its conditions for a random melody, and a delay sequence (B, K, S) of T frames."""
    lm = tiny_lm(**fusions, **changes)
    text, mask, chroma = conditions(lm, B)
    sequence, _ = lm.pattern.build(random_codes(B, T), lm.special)  # (B, K, S)
    return lm, text, mask, chroma, sequence


# ---- 1. the KV cache holds the prefix once -----------------------------------------------------------
@pytest.mark.parametrize("fusions", FUSIONS + [dict(melody_fusion="sum", text_fusion="prepend")])
def test_cached_decoding_equals_one_full_pass(fusions):
    """The last case has both a prefix (text) and per-step melody: a step's melody is found after P."""
    lm, text, mask, chroma, sequence = setup(fusions)
    S = sequence.shape[-1]
    conds = lm.conditions(text, mask, chroma, S)
    P = 0 if conds.prefix is None else conds.prefix.shape[1]
    with torch.no_grad():
        full = lm(sequence, conds)  # (B, K, S, card)
        cache = KVCache()
        chunks = [lm(sequence[..., :4], conds, cache=cache)]  # the prefix goes in with this call only
        chunks += [lm(sequence[..., s:s + 1], conds, cache=cache) for s in range(4, S)]
    assert full.shape == (2, 4, S, CARD)
    assert torch.allclose(torch.cat(chunks, dim=2), full, atol=1e-5)
    expected_P = (lm.melody_frames if fusions["melody_fusion"] == "prepend" else 0) + \
        (text.shape[1] if fusions.get("text_fusion") == "prepend" else 0)
    assert P == expected_P and cache.length == P + S  # the prefix held once, then every step


# ---- 2. the null melody is "no melody" ------------------------------------------------------------------
@pytest.mark.parametrize("melody_fusion", ["prepend", "sum"])
def test_null_melody_equals_no_melody_and_a_real_melody_changes_the_logits(melody_fusion):
    lm, text, mask, _, sequence = setup(dict(melody_fusion=melody_fusion))
    S, F_ = sequence.shape[-1], lm.melody_frames
    assert torch.equal(lm.null_chroma, F.one_hot(torch.zeros(1, F_, dtype=torch.long), 12).float())  # gate off: C
    silent = lm.chroma(torch.zeros(2, 1, round(lm.cfg.window_seconds * lm.cfg.sample_rate)))  # one silent window
    with torch.no_grad():
        logits = [lm(sequence, lm.conditions(text, mask, chroma, S))
                  for chroma in (None, lm.null_chroma.expand(2, -1, -1), silent)]
        played = F.one_hot(torch.randint(1, 12, (2, F_), generator=torch.Generator().manual_seed(4)), 12).float()
        melody = lm(sequence, lm.conditions(text, mask, played, S))  # pitch classes 1..11, never the null's C
    assert torch.allclose(logits[0], logits[1], atol=1e-6) and torch.allclose(logits[0], logits[2], atol=1e-6)
    assert (melody - logits[0]).abs().max() > 1e-3


# ---- 3. the prefix takes positions 0..P-1, the steps follow, all causal --------------------------------
@pytest.mark.parametrize("fusions", PREPEND)
def test_prefix_then_steps_rebuilt_by_hand(fusions):
    lm, text, mask, chroma, sequence = setup(fusions)
    (B, K, S), D = sequence.shape, lm.cfg.dim
    conds = lm.conditions(text, mask, chroma, S)
    P = conds.prefix.shape[1]
    with torch.no_grad():
        steps = sum(lm.embeddings[k].weight[sequence[:, k]] for k in range(K))  # Σ_k Emb_k(x_k), (B, S, D)
        x = torch.cat([conds.prefix, steps], dim=1)               # positions 0..P-1, then P..P+S-1
        h = lm.transformer(x, condition=conds.cross, condition_mask=conds.cross_mask)  # (B, P + S, D)
        expected = torch.stack([h[:, P:] @ lm.heads[k].weight.t() for k in range(K)], dim=1)  # heads on the steps only
        logits = lm(sequence, conds)
    assert torch.allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize("fusions", PREPEND)
def test_prefix_reaches_every_step_and_a_later_token_never_an_earlier_prediction(fusions):
    lm, text, mask, chroma, sequence = setup(fusions)
    S = sequence.shape[-1]
    moved = chroma.clone()
    moved[:, -1] = moved[:, -1].roll(1, dims=-1)  # the last chroma frame of the prefix plays another class
    later = sequence.clone()
    j = 6
    later[:, :, j] = (later[:, :, j] + 1) % CARD  # a new token at step j only
    with torch.no_grad():
        base = lm(sequence, lm.conditions(text, mask, chroma, S))
        by_melody = lm(sequence, lm.conditions(text, mask, moved, S))
        by_token = lm(later, lm.conditions(text, mask, chroma, S))
    assert ((by_melody - base).abs().amax(dim=(0, 1, 3)) > 1e-4).all()  # every step saw the prefix
    assert torch.equal(by_token[:, :, :j], base[:, :, :j])              # steps before j: untouched
    assert (by_token[:, :, j:] - base[:, :, j:]).abs().max() > 1e-4


# ---- 4. no loss on the prefix ----------------------------------------------------------------------------
@pytest.mark.parametrize("fusions", PREPEND)
def test_loss_is_the_cross_entropy_of_the_steps_only(fusions):
    lm, text, mask, chroma, _ = setup(fusions)
    lm.cfg.start_weight = 1.0  # the paper's plain mean
    codes = random_codes(2, 10)
    sequence, _ = lm.pattern.build(codes, lm.special)
    with torch.no_grad():
        loss, per_codebook = lm.compute_loss(codes, text, mask, chroma)
        step_logits = lm(sequence, lm.conditions(text, mask, chroma, sequence.shape[-1]))
        logits, valid = lm.pattern.revert_logits(step_logits)  # (B, K, T, card), (K, T)
    assert step_logits.shape == (2, 4, sequence.shape[-1], CARD)  # one output per step, none for the prefix
    expected = torch.stack([F.cross_entropy(logits[:, k][:, valid[k]].reshape(-1, CARD), codes[:, k][:, valid[k]].reshape(-1))
                            for k in range(4)])
    assert torch.allclose(per_codebook, expected, atol=1e-5)
    assert torch.allclose(loss, expected.mean(), atol=1e-5)


# ---- 5. the fill, and the text in the prefix -------------------------------------------------------------
def test_a_short_chroma_is_repeated_and_a_long_one_cut():
    lm = tiny_lm()
    F_ = lm.melody_frames
    short = F.one_hot(torch.tensor([[5, 7, 9]]), 12).float()  # (1, 3, 12)
    assert lm.fit_chroma(short)[0].argmax(-1).tolist() == [[5, 7, 9][f % 3] for f in range(F_)]
    assert lm.fit_chroma(short).sum() == F_  # every frame one-hot: nothing zero-padded
    long = F.one_hot(torch.arange(F_ + 4)[None] % 12, 12).float()  # (1, F + 4, 12)
    assert torch.equal(lm.fit_chroma(long), long[:, :F_])
    for bad in (torch.zeros(3, 12), torch.zeros(1, 0, 12), torch.zeros(1, 3, 11)):
        with pytest.raises(ValueError, match="chroma must be"):
            lm.fit_chroma(bad)


def test_text_prepend_puts_melody_then_text_in_the_prefix_and_needs_no_cross_attention():
    lm, text, mask, chroma, _ = setup(dict(melody_fusion="prepend", text_fusion="prepend"))
    assert all(block.cross_attention is None for block in lm.transformer.blocks)
    with torch.no_grad():
        conds = lm.conditions(text, mask, chroma)
        melody = lm.melody_projection(chroma)  # (B, F, D)
    F_, L = lm.melody_frames, text.shape[1]
    assert conds.cross is None and conds.cross_mask is None and conds.steps is None
    assert conds.prefix.shape == (2, F_ + L, lm.cfg.dim)  # P = F + L
    assert torch.equal(conds.prefix[:, :F_], melody) and torch.equal(conds.prefix[:, F_:], text)


# ---- 6. gradients flow through the prefix ----------------------------------------------------------------
@pytest.mark.parametrize("fusions, text_encoder", [(FUSIONS[0], "t5"), (FUSIONS[2], "t5"), (FUSIONS[2], "scratch")])
def test_gradients_reach_the_melody_projection_and_the_prepended_text_encoder(fusions, text_encoder):
    lm = tiny_lm(**fusions, text_encoder=text_encoder).train()
    text, mask, chroma = conditions(lm)  # encoded with autograd on
    loss, _ = lm.compute_loss(random_codes(2, 10), text, mask, chroma)
    loss.backward()
    for p in (lm.melody_projection.weight, lm.melody_projection.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    if fusions.get("text_fusion") == "prepend":  # the text's only way in is the prefix
        trainable = [(n, p) for n, p in lm.text_encoder.named_parameters() if p.requires_grad]
        assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), \
            [n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0]


# ---- 7. MusicGen with a prepend LM past the training window ----------------------------------------------
def test_musicgen_with_a_prepend_melody_past_one_window():
    lm = tiny_lm(melody_fusion="prepend")  # 1 s windows (25 frames)
    codec = EncodecModel(TINY_CODEC.__class__(**{**TINY_CODEC.__dict__, "codebook_size": CARD, "n_filters": 4,
                                                 "ratios": (8, 5, 4, 4), "dimension": 8}))
    with torch.no_grad():  # untrained codebooks are all zero (they start from data): every code would sound alike
        for layer in codec.quantizer.layers:
            layer.codebook.normal_(generator=torch.Generator().manual_seed(2))
    model = MusicGen(codec.eval(), lm, Tokenizer(["<pad>", "<unk>", "tune"]))
    model.set_generation_params(duration=2.5, extend_stride=0.5)  # three windows
    sr = model.sample_rate
    melody = torch.sin(2 * math.pi * 440 * torch.arange(round(1.5 * sr)) / sr)[None, None]  # 1.5 s of A4
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(model.generate_with_chroma(["tune"], melody, sr))
    assert runs[0].shape == (1, 1, round(2.5 * model.frame_rate) * codec.hop_length)
    assert torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # A silent melody is the null melody (gate off): the same audio as no melody at the same seed.
    torch.manual_seed(5)
    silent = model.generate_with_chroma(["tune"], torch.zeros(1, 1, round(2.5 * sr)), sr)
    torch.manual_seed(5)
    assert torch.equal(silent, model.generate(["tune"]))
    torch.manual_seed(5)
    assert not torch.equal(silent, model.generate_with_chroma(["tune"], melody, sr))  # the melody is heard
