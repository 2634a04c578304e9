"""Exercise 7 (§2.2): laying the codes out over the pattern's steps, and back.

A pattern P = (P_0, ..., P_S) puts every token (k, t) of the codes (B, K, T) at one sequence step
s = step_of[k, t] (P_0 = ∅ is the start step). The LM reads a sequence (B, K, S) with one slot per
codebook and step; cells that hold no token get the special token (codebook_size), e.g. the delay
pattern, K = 3, T = 2, special = 99:

    codes[b]        sequence[b]                  mask
    11 12           99 11 12 99 99               .  x  x  .  .
    21 22    ──▶    99 99 21 22 99               .  .  x  x  .
    31 32           99 99 99 31 32               .  .  .  x  x

    sequence[b, k, step_of[k, t]] = codes[b, k, t],   all other cells = special,   mask = real cells.

Write `Pattern.build(codes, special)` -> (sequence (B, K, S), mask (K, S) bool) and its exact inverse
`Pattern.revert(sequence)` -> codes (B, K, T), in patterns.py. `self.step_of(T, device)` gives the
(K, T) steps; S = self.num_steps(T); revert finds T from S with self.num_frames(S). revert reads only
the real cells, whatever the special cells hold.
"""
import torch

from patterns import FlattenPattern, PartialFlattenPattern, VallEPattern
from course.stand_ins import HandDelay
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=7, title="Build and revert a pattern", section="§2.2",
    blanks=[("patterns.py", "Pattern.build"), ("patterns.py", "Pattern.revert")],
    hints=["build: start from a (B, K, S) tensor full of `special` (codes.new_full), then write each token "
           "at its step. step = self.step_of(T, codes.device) is (K, T): token (k, t) goes to column step[k, t] "
           "of row k.",
           "One scatter along the step axis does it: sequence.scatter_(2, step.expand(B, K, T), codes). The mask "
           "is the same scatter of True into a (K, S) tensor of False.",
           "revert is the gather of the same indices: codes[b, k, t] = sequence[b, k, step[k, t]], with "
           "T = self.num_frames(S). No shift here: the '- 1' belongs to the logits (exercise 8)."],
)

SPECIAL = 99


def compare_build(pattern, codes, expected, label: str):
    """Compare build(codes, SPECIAL) with the expected sequence (B, K, S); the mask is where it is real."""
    got = pattern.build(codes, SPECIAL)
    if not isinstance(got, tuple) or len(got) != 2:
        raise Wrong(f"{label}: build must return two things, (sequence (B, K, S), mask (K, S)); got {type(got).__name__}")
    sequence, mask = got
    B, K, S = expected.shape
    if not isinstance(sequence, torch.Tensor) or tuple(sequence.shape) != (B, K, S):
        raise Wrong(f"{label}: sequence should be (B, K, S) = {(B, K, S)}, got {tuple(getattr(sequence, 'shape', ()))} "
                    "(S = self.num_steps(T), the start step included)")
    if sequence.dtype != codes.dtype:
        raise Wrong(f"{label}: sequence has dtype {sequence.dtype}, the codes {codes.dtype}: keep the codes' dtype")
    empty = expected == SPECIAL
    if not torch.equal(sequence[empty], expected[empty]):
        wrong = sequence[empty][sequence[empty] != SPECIAL]
        raise Wrong(f"{label}: a cell with no token holds {int(wrong[0])}: empty cells must hold the special "
                    f"token (special={SPECIAL}, the argument), e.g. codes.new_full((B, K, S), special)")
    if not torch.equal(sequence, expected):
        b, k, s = [int(i) for i in (sequence != expected).nonzero()[0]]
        raise Wrong(f"{label}: sequence[{b}, {k}, {s}] = {int(sequence[b, k, s])}, expected {int(expected[b, k, s])}: "
                    "token (k, t) belongs at sequence[b, k, step_of[k, t]], in its own row k")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (K, S):
        raise Wrong(f"{label}: the mask should be (K, S) = {(K, S)} (the same for every batch row), "
                    f"got {tuple(getattr(mask, 'shape', ()))}")
    if mask.dtype != torch.bool:
        raise Wrong(f"{label}: the mask should be bool, got {mask.dtype}")
    real = ~empty[0]
    if torch.equal(mask, ~real):
        raise Wrong(f"{label}: the mask is True on the special cells: the mask marks the real tokens (True where a "
                    "token of the codes sits, K·T cells)")
    if not torch.equal(mask, real):
        k, s = [int(i) for i in (mask != real).nonzero()[0]]
        raise Wrong(f"{label}: mask[{k}, {s}] is {bool(mask[k, s])}, expected {bool(real[k, s])}: the mask is True "
                    "exactly where a real token sits")


def check_known_delay():
    """Delay, K=3, T=2: the sequence and mask of the docstring's picture, by hand."""
    codes = torch.tensor([[[11, 12], [21, 22], [31, 32]],
                          [[41, 42], [51, 52], [61, 62]]])
    expected = torch.tensor([[[99, 11, 12, 99, 99], [99, 99, 21, 22, 99], [99, 99, 99, 31, 32]],
                             [[99, 41, 42, 99, 99], [99, 99, 51, 52, 99], [99, 99, 99, 61, 62]]])
    compare_build(HandDelay(3), codes, expected, "delay, K=3, T=2")


def check_known_flatten_and_vall_e():
    """Flatten (K=2, T=2) and vall-e (K=3, T=2): their sequences, by hand."""
    codes = torch.tensor([[[11, 12], [21, 22]]])
    expected = torch.tensor([[[99, 11, 99, 12, 99], [99, 99, 21, 99, 22]]])  # (k, t) at 1 + 2t + k
    compare_build(FlattenPattern(2), codes, expected, "flatten, K=2, T=2")
    codes = torch.tensor([[[11, 12], [21, 22], [31, 32]]])
    expected = torch.tensor([[[99, 11, 12, 99, 99], [99, 99, 99, 21, 22], [99, 99, 99, 31, 32]]])
    compare_build(VallEPattern(3), codes, expected, "vall-e, K=3, T=2")


def check_revert_known():
    """revert of a hand-made delay sequence (K=3, T=2) whose empty cells hold junk: the codes, read from the real cells."""
    sequence = torch.tensor([[[-7, 11, 12, -7, -7], [-7, -7, 21, 22, -7], [-7, -7, -7, 31, 32]]])
    got = HandDelay(3).revert(sequence)
    expected = torch.tensor([[[11, 12], [21, 22], [31, 32]]])
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (1, 3, 2):
        raise Wrong(f"revert should return codes (B, K, T) = (1, 3, 2) for S=5 steps, got "
                    f"{tuple(getattr(got, 'shape', ()))}: T comes from S with self.num_frames(S)")
    if torch.equal(got, torch.tensor([[[-7, 11], [-7, 21], [-7, 31]]])):
        raise Wrong("revert read each token one step early (at step_of[k, t] - 1): that shift belongs to the "
                    "logits (exercise 8); build's inverse reads the very cell build wrote, step_of[k, t]")
    if not torch.equal(got, expected):
        raise Wrong(f"revert gave {got[0].tolist()}, expected {expected[0].tolist()}: codes[b, k, t] = "
                    "sequence[b, k, step_of[k, t]] (the special cells are never read)")


def check_revert_undoes_build():
    """revert(build(codes)) == codes: 4 patterns, K = 1, 2, 4, T = 1, 2, 5, batches of 1 and 3, codes incl. -1."""
    generator = torch.Generator().manual_seed(0)
    for make in (HandDelay, FlattenPattern, PartialFlattenPattern, VallEPattern):
        for K in (1, 2, 4):
            pattern = make(K)
            for T in (1, 2, 5):
                for B in (1, 3):
                    # -1 is the sampler's "not known yet"; any value must come back, even the special one.
                    codes = torch.randint(-1, SPECIAL + 1, (B, K, T), generator=generator)
                    sequence, mask = pattern.build(codes, SPECIAL)
                    if int(mask.sum()) != K * T:
                        raise Wrong(f"{pattern.name}, K={K}, T={T}: the mask has {int(mask.sum())} True cells, "
                                    f"expected K·T = {K * T} (one per real token)")
                    got = pattern.revert(sequence)
                    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (B, K, T):
                        raise Wrong(f"{pattern.name}, K={K}, T={T}: revert gave shape "
                                    f"{tuple(getattr(got, 'shape', ()))}, expected {(B, K, T)}")
                    if not torch.equal(got, codes):
                        b, k, t = [int(i) for i in (got != codes).nonzero()[0]]
                        raise Wrong(f"{pattern.name}, K={K}, T={T}: revert(build(codes)) differs at (b={b}, k={k}, "
                                    f"t={t}): {int(got[b, k, t])} instead of {int(codes[b, k, t])}; revert must read "
                                    "the cell build wrote, sequence[b, k, step_of[k, t]]")
