"""Tests for patterns.py: the six layouts of Figure 1 written out by hand, build/revert as exact
inverses, the mask, the 'output s predicts step s+1' shift, step counts (Table 3)."""
import pytest
import torch

from patterns import PATTERN_NAMES, make_pattern

K, T = 4, 3
SPECIAL = 99

# Figure 1 by hand, K=4, T=3. Row kN = codebook N, column s = sequence step, tN = frame N, . = special.
EXPECTED = {
    "parallel": """
        k1  .  t0 t1 t2
        k2  .  t0 t1 t2
        k3  .  t0 t1 t2
        k4  .  t0 t1 t2""",
    "delay": """
        k1  .  t0 t1 t2 .  .  .
        k2  .  .  t0 t1 t2 .  .
        k3  .  .  .  t0 t1 t2 .
        k4  .  .  .  .  t0 t1 t2""",
    "partial-delay": """
        k1  .  t0 t1 t2 .
        k2  .  .  t0 t1 t2
        k3  .  .  t0 t1 t2
        k4  .  .  t0 t1 t2""",
    "flatten": """
        k1  .  t0 .  .  .  t1 .  .  .  t2 .  .  .
        k2  .  .  t0 .  .  .  t1 .  .  .  t2 .  .
        k3  .  .  .  t0 .  .  .  t1 .  .  .  t2 .
        k4  .  .  .  .  t0 .  .  .  t1 .  .  .  t2""",
    "partial-flatten": """
        k1  .  t0 .  t1 .  t2 .
        k2  .  .  t0 .  t1 .  t2
        k3  .  .  t0 .  t1 .  t2
        k4  .  .  t0 .  t1 .  t2""",
    "vall-e": """
        k1  .  t0 t1 t2 .  .  .
        k2  .  .  .  .  t0 t1 t2
        k3  .  .  .  .  t0 t1 t2
        k4  .  .  .  .  t0 t1 t2""",
}

# S for T frames and K=4 codebooks, by hand from the layouts above (Table 3's step counts).
EXPECTED_STEPS = {  # name: (S for T=3, S for T=500)
    "parallel": (4, 501), "delay": (7, 504), "partial-delay": (5, 502),
    "flatten": (13, 2001), "partial-flatten": (7, 1001), "vall-e": (7, 1001),
}


def random_codes(B=2, n_q=K, n_frames=T, seed=0):
    return torch.randint(0, 16, (B, n_q, n_frames), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_layout_matches_figure_1(name):
    pattern = make_pattern(name, K)
    # Encode both the codebook and the frame in each token, so a misplaced row would show too.
    codes = (10 * torch.arange(K)[:, None] + torch.arange(T)[None, :])[None]  # (1, K, T), value 10k + t
    sequence, _ = pattern.build(codes, SPECIAL)
    rows = []
    for k in range(K):
        cells = []
        for value in sequence[0, k].tolist():
            if value == SPECIAL:
                cells.append(".")
            else:
                assert value // 10 == k, f"codebook {value // 10} token landed in row {k}"
                cells.append(f"t{value % 10}")
        rows.append([f"k{k + 1}"] + cells)
    expected = [line.split() for line in EXPECTED[name].strip().splitlines()]
    assert rows == expected


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_grid_printout_shows_the_same_layout(name):
    """`python patterns.py` draws what build does (rows without the header line)."""
    lines = make_pattern(name, K).grid(T).splitlines()
    assert lines[0].split()[0] == "s0"
    assert [line.split() for line in lines[1:]] == [line.split() for line in EXPECTED[name].strip().splitlines()]


@pytest.mark.parametrize("name", PATTERN_NAMES)
@pytest.mark.parametrize("n_q,n_frames", [(4, 3), (4, 17), (1, 5), (2, 1), (8, 9)])
def test_build_then_revert_is_identity(name, n_q, n_frames):
    pattern = make_pattern(name, n_q)
    codes = random_codes(B=3, n_q=n_q, n_frames=n_frames, seed=n_q * 100 + n_frames)
    sequence, mask = pattern.build(codes, special=16)
    assert sequence.shape == (3, n_q, pattern.num_steps(n_frames))
    assert torch.equal(pattern.revert(sequence), codes)
    # The special token fills exactly the cells the mask leaves out: no token is lost or doubled.
    assert (sequence[:, ~mask] == 16).all() and (sequence[:, mask] != 16).all()


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_mask_marks_exactly_the_real_tokens(name):
    pattern = make_pattern(name, K)
    sequence, mask = pattern.build(random_codes(), SPECIAL)
    assert mask.dtype == torch.bool and mask.shape == (K, pattern.num_steps(T))
    assert int(mask.sum()) == K * T
    assert torch.equal(mask, (sequence[0] != SPECIAL))
    assert not mask[:, 0].any(), "step 0 is the all-special start step"
    assert torch.equal(mask, pattern.positions(T) >= 0)


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_revert_logits_applies_the_next_step_shift(name):
    """Logits at output step s that one-hot encode the token at step s+1 must revert to the codes."""
    card, B = 16, 2
    pattern = make_pattern(name, K)
    codes = random_codes(B=B)
    sequence, _ = pattern.build(codes, special=card)  # special = card: one-hot over card + 1 classes
    S = sequence.shape[-1]
    next_tokens = torch.cat([sequence[..., 1:], torch.full((B, K, 1), card)], dim=-1)  # (B, K, S)
    logits = torch.nn.functional.one_hot(next_tokens, card + 1).float()[..., :card]  # (B, K, S, card)
    reverted, valid = pattern.revert_logits(logits)
    assert reverted.shape == (B, K, T, card) and valid.shape == (K, T) and valid.all()
    assert torch.equal(reverted.argmax(-1), codes)
    # Without the shift (reading step s itself) the answer would be wrong somewhere.
    unshifted = torch.nn.functional.one_hot(sequence, card + 1).float()[..., :card]
    assert not torch.equal(pattern.revert_logits(unshifted)[0].argmax(-1), codes)


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_num_steps_and_decoding_steps(name):
    pattern = make_pattern(name, K)
    for n_frames, expected in zip((3, 500), EXPECTED_STEPS[name]):
        assert pattern.num_steps(n_frames) == expected
        assert pattern.decoding_steps(n_frames) == expected - 1
        assert pattern.num_frames(expected) == n_frames
        assert len(pattern.layout(n_frames)) == expected


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_positions_give_the_frame_of_every_real_cell(name):
    pattern = make_pattern(name, K)
    codes = (torch.arange(T)[None, None, :]).expand(1, K, T)  # token value = its own frame
    sequence, mask = pattern.build(codes, SPECIAL)
    frames = pattern.positions(T)
    assert frames.shape == (K, pattern.num_steps(T))
    assert torch.equal(frames[mask], sequence[0][mask]) and (frames[~mask] == -1).all()


def test_unknown_tokens_pass_through_build_and_revert():
    """The sampler lays out codes holding -1 (not yet generated) and reads them back."""
    pattern = make_pattern("delay", K)
    codes = torch.full((1, K, 5), -1)
    codes[..., :2] = 7  # a two-frame prompt
    sequence, _ = pattern.build(codes, SPECIAL)
    assert torch.equal(pattern.revert(sequence), codes)


def test_bad_inputs_raise_clear_errors():
    pattern = make_pattern("delay", K)
    with pytest.raises(ValueError, match="codes must be"):
        pattern.build(torch.zeros(1, K + 1, 3, dtype=torch.long), SPECIAL)
    with pytest.raises(ValueError, match="no number of frames"):
        make_pattern("flatten", K).revert(torch.zeros(1, K, 6, dtype=torch.long))  # S = 1 + 4T never 6
    with pytest.raises(ValueError, match="unknown pattern"):
        make_pattern("zigzag", K)
