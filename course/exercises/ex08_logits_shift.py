"""Exercise 8 (§2.2-§2.3): which output predicts which token.

The LM reads the sequence (B, K, S) and gives logits (B, K, S, card), one distribution per codebook and
step. Autoregression means the output at step s can only predict what comes *after* what it has read:
it models P_{s+1} given P_0..P_s. So the logits for token (k, t), which sits at step s = step_of[k, t],
are the ones output at step s - 1:

    out[b, k, t, :] = logits[b, k, step_of[k, t] - 1, :],       valid[k, t] = step_of[k, t] - 1 >= 0.

Delay pattern, K = 3, T = 2 (a cell shows the output step whose logits predict it):

            s0 s1 s2 s3 s4                     t0 t1
        k1  .  t0 t1 .  .        ──▶       k1  0  1
        k2  .  .  t0 t1 .                  k2  1  2
        k3  .  .  .  t0 t1                 k3  2  3

Write `Pattern.revert_logits(logits)` in patterns.py: it returns the logits aligned with the codes,
(B, K, T, card), and valid (K, T) bool (all True for patterns whose step 0 is the empty start step;
the loss takes its mask from it). T = self.num_frames(S); self.step_of(T, device) gives the steps.
"""
import torch

from patterns import FlattenPattern, PartialFlattenPattern, VallEPattern
from course.stand_ins import HandDelay
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=8, title="The logits' shift", section="§2.2",
    blanks=[("patterns.py", "Pattern.revert_logits")],
    hints=["T = self.num_frames(S); source = self.step_of(T, logits.device) - 1 is (K, T): the output step "
           "whose logits predict token (k, t).",
           "Gather along the step axis (dim 2) with that index expanded to (B, K, T, card): "
           "source[None, :, :, None].expand(B, K, T, card).",
           "valid = source >= 0 (K, T); clamp the index at 0 before the gather so it is always in range."],
)


def labelled_logits(B: int, K: int, S: int, card: int) -> torch.Tensor:
    """logits[b, k, s, c] = 10000·b + 1000·k + 10·s + c: each value says where it came from (card <= 10)."""
    b, k, s, c = torch.meshgrid(torch.arange(B), torch.arange(K), torch.arange(S), torch.arange(card), indexing="ij")
    return (10000 * b + 1000 * k + 10 * s + c).double()


def compare_shift(pattern, T: int, source: dict, label: str, B: int = 2, card: int = 4):
    """revert_logits on labelled logits: token (k, t) must get the logits of output step source[(k, t)]."""
    K, S = pattern.n_q, len(pattern.layout(T))
    logits = labelled_logits(B, K, S, card)
    got = pattern.revert_logits(logits)
    if not isinstance(got, tuple) or len(got) != 2:
        raise Wrong(f"{label}: revert_logits must return two things, (logits (B, K, T, card), valid (K, T)); "
                    f"got {type(got).__name__}")
    out, valid = got
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (B, K, T, card):
        raise Wrong(f"{label}: the logits should come back as (B, K, T, card) = {(B, K, T, card)}, got "
                    f"{tuple(getattr(out, 'shape', ()))} (T = self.num_frames(S))")
    for (k, t), s in sorted(source.items()):
        for b in range(B):
            cell = out[b, k, t]
            if not torch.equal(cell, logits[b, k, s]):
                value = int(cell[0])
                came_b, came_k, came_s = value // 10000, value % 10000 // 1000, value % 1000 // 10
                if came_b != b or came_k != k:
                    raise Wrong(f"{label}: the logits for token (b={b}, k={k}, t={t}) came from batch row {came_b}, "
                                f"codebook {came_k}: each codebook's logits stay in their own row, gather along the "
                                "step axis (dim 2) only")
                if not torch.equal(cell - cell[0], torch.arange(card).double()):
                    raise Wrong(f"{label}: the card entries of token (k={k}, t={t}) are shuffled: gather with "
                                "the same step index for every entry of the last axis")
                if came_s == s + 1:
                    raise Wrong(f"{label}: the logits for token (k={k}, t={t}) were read at output step {came_s}, "
                                f"the token's own step; the output at step s predicts step s+1, so they are read "
                                f"at step_of[k, t] - 1 = {s}")
                raise Wrong(f"{label}: the logits for token (k={k}, t={t}) were read at output step {came_s}, "
                            f"expected step_of[k, t] - 1 = {s} (each codebook has its own step_of[k, t])")
    if not isinstance(valid, torch.Tensor) or tuple(valid.shape) != (K, T) or valid.dtype != torch.bool:
        raise Wrong(f"{label}: valid should be a (K, T) = {(K, T)} bool tensor, got "
                    f"{getattr(valid, 'dtype', type(valid).__name__)} {tuple(getattr(valid, 'shape', ()))}")
    if not valid.all():
        k, t = [int(i) for i in (~valid).nonzero()[0]]
        raise Wrong(f"{label}: valid[{k}, {t}] is False, but token (k={k}, t={t}) is predicted by output step "
                    f"{source[(k, t)]}: valid is step_of[k, t] - 1 >= 0, so step 0's output counts "
                    "(step 0 is the start step, so s - 1 >= 0 for every token)")


def check_known_delay():
    """Delay, K=3, T=2: token (k, t) gets the logits of output step t + k (the docstring's table, by hand)."""
    source = {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2, (2, 0): 2, (2, 1): 3}
    compare_shift(HandDelay(3), 2, source, "delay, K=3, T=2")


def check_known_vall_e_and_flatten():
    """Vall-e (K=3, T=2) and flatten (K=2, T=2): the output steps, by hand."""
    source = {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3, (2, 0): 2, (2, 1): 3}  # (k>0, t) at step 3 + t
    compare_shift(VallEPattern(3), 2, source, "vall-e, K=3, T=2")
    source = {(0, 0): 0, (1, 0): 1, (0, 1): 2, (1, 1): 3}  # (k, t) at step 1 + 2t + k
    compare_shift(FlattenPattern(2), 2, source, "flatten, K=2, T=2", card=3)


def check_every_token():
    """4 patterns, K = 1, 2, 4, T = 1, 3, 5: every token's logits, and gradients flow back to the read cells."""
    for make in (HandDelay, FlattenPattern, PartialFlattenPattern, VallEPattern):
        for K in (1, 2, 4):
            pattern = make(K)
            for T in (1, 3, 5):
                # The step of each token, read off the layout by a loop of our own.
                source = {(k, t): s - 1 for s, cells in enumerate(pattern.layout(T)) for k, t in cells}
                compare_shift(pattern, T, source, f"{pattern.name}, K={K}, T={T}", B=1, card=3)
    pattern = HandDelay(2)
    logits = torch.randn(2, 2, 5, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out, _ = pattern.revert_logits(logits)
    if not out.requires_grad:
        raise Wrong("the logits returned do not require grad: revert_logits must keep the graph (index the "
                    "logits, e.g. with gather), the loss backpropagates through it")
    out.sum().backward()
    read = torch.zeros(2, 5)  # HandDelay K=2, T=3: (k, t) read at output step t + k
    for k in range(2):
        read[k, k:k + 3] = 1
    if not torch.equal(logits.grad, read[None, :, :, None].expand(2, 2, 5, 3)):
        raise Wrong("the gradient reaches the wrong output steps: each token's loss must flow back to the one "
                    "output step that predicts it, step_of[k, t] - 1")
