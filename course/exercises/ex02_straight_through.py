"""Exercise 2 (§2.1, EnCodec's quantizer): the forward pass, straight through.

The quantizer's forward pass turns the encoder's latents z (B, D, T) into codebook vectors q and the
codes (B, T). Choosing the nearest entry has no gradient, so two tricks of VQ-VAE let the encoder learn:

    straight-through:   q_st = z + sg[q − z]        (forward: q;  backward: ∂q_st/∂z = identity)
    commitment loss:    L_c  = ||z − sg[q]||²        (mean over elements; β = 1 as EnCodec)

(sg = stop gradient, `.detach()`). The codebook does not learn by gradient: in training mode it moves by
EMA. Write `VectorQuantizer.forward` in rvq.py: x (B, D, T) -> (quantized (B, D, T) with the
straight-through gradient, codes (B, T) int64, commitment loss (a scalar)). Flatten x to the M = B·T
rows (M, D) of its vectors (detached), `self.assign` them; in training mode call `self.init_kmeans`
on the rows first while `self.initialized` is False, and after assigning call `self.ema_update(rows,
indices)` then `self.revive_dead_codes(rows)`. Eval mode never touches the codebook.
"""
from contextlib import contextmanager

import torch

import rvq
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=2, title="The quantizer's forward pass: straight through", section="§2.1",
    blanks=[("rvq.py", "VectorQuantizer.forward")],
    hints=["Rows first: x.detach().transpose(1, 2).reshape(-1, D) is (B·T, D), vector (b, t) in row b·T + t. "
           "self.codebook[indices] is (M, D); .view(B, T, D).transpose(1, 2) puts it back as (B, D, T).",
           "Training mode: `if self.training and not bool(self.initialized): self.init_kmeans(rows)`, then "
           "assign, then `if self.training:` ema_update(rows, indices) and revive_dead_codes(rows), in that order.",
           "Commitment: F.mse_loss(x, quantized.detach()). Straight-through: x + (quantized - x).detach(): its "
           "value is quantized, its gradient w.r.t. x is the identity. Without the .detach() the gradient is zero."],
)

# A hand-made 2-D codebook and six latent vectors (B = 2, T = 3) with the entry each sits next to.
CODEBOOK = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
POINTS = torch.tensor([[[1.0, 1.0], [9.0, 0.5], [0.2, 8.0]],     # batch 0, frames 0..2: entries 0, 1, 2
                       [[11.0, 9.0], [9.0, 1.0], [0.5, 1.5]]])   # batch 1: entries 3, 1, 0
CODES = torch.tensor([[0, 1, 2], [3, 1, 0]])
# Squared distances to those entries: 2, 1.25, 4.04 | 2, 2, 2.5 -> sum 13.79 over 12 elements.
COMMITMENT = 13.79 / 12


def latents():
    """POINTS as the encoder's layout (B, D, T) = (2, 2, 3): x[b, :, t] is POINTS[b, t]."""
    return POINTS.transpose(1, 2).contiguous()


def reference_assign(self, x):
    """The nearest entry by the definition (exercise 1's function, written out here)."""
    return ((x[:, None, :] - self.codebook[None]) ** 2).sum(-1).argmin(dim=1)


@contextmanager
def spied_quantizer():
    """rvq.VectorQuantizer with assign by definition and spies for the codebook's updates; yields the
    list of calls (name, rows, indices). The spy init_kmeans puts CODEBOOK in place."""
    calls = []
    cls = rvq.VectorQuantizer

    def init_kmeans(self, x, vectors_per_batch=None):
        calls.append(("init_kmeans", x.detach().clone(), None))
        self.codebook.copy_(CODEBOOK)
        self.initialized.fill_(True)

    def ema_update(self, x, indices):
        calls.append(("ema_update", x.detach().clone(), indices.clone()))

    def revive_dead_codes(self, x):
        calls.append(("revive_dead_codes", x.detach().clone(), None))
        return 0

    saved = {name: cls.__dict__[name] for name in ("assign", "init_kmeans", "ema_update", "revive_dead_codes")}
    try:
        cls.assign, cls.init_kmeans, cls.ema_update, cls.revive_dead_codes = \
            reference_assign, init_kmeans, ema_update, revive_dead_codes
        yield calls
    finally:
        for name, value in saved.items():
            setattr(cls, name, value)


def ready_quantizer(training=False):
    """A quantizer holding CODEBOOK, already initialised."""
    vq = rvq.VectorQuantizer(dim=2, codebook_size=4)
    vq.codebook.copy_(CODEBOOK)
    vq.initialized.fill_(True)
    return vq.train(training)


def check_outputs_on_hand_made_points():
    """Eval mode, six hand-made vectors: the codes, the quantized vectors (B, D, T) and the loss value."""
    with spied_quantizer():
        vq = ready_quantizer()
        out = vq(latents())
    if not isinstance(out, tuple) or len(out) != 3:
        raise Wrong("forward should return three things: (quantized, codes, commitment loss)")
    quantized, codes, commitment = out
    if not isinstance(codes, torch.Tensor) or tuple(codes.shape) != (2, 3):
        raise Wrong(f"codes should be (B, T) = (2, 3), got {tuple(getattr(codes, 'shape', ()))}: "
                    "view the M = B·T indices back as (B, T)")
    if codes.dtype != torch.long:
        raise Wrong(f"codes must be int64 (the LM's tokens), got {codes.dtype}")
    if not torch.equal(codes, CODES):
        raise Wrong(f"codes are {codes.tolist()}, expected {CODES.tolist()}: are the rows the vectors x[b, :, t]? "
                    "Flatten (B, D, T) to (B·T, D) with transpose(1, 2) before reshape, not reshape alone")
    expected = CODEBOOK[CODES].transpose(1, 2)  # (B, T, D) -> (B, D, T)
    if not isinstance(quantized, torch.Tensor) or tuple(quantized.shape) != (2, 2, 3):
        raise Wrong(f"quantized should have x's shape (B, D, T) = (2, 2, 3), "
                    f"got {tuple(getattr(quantized, 'shape', ()))}")
    if not torch.allclose(quantized, expected):
        raise Wrong("quantized[b, :, t] should be the codebook entry of codes[b, t], laid out (B, D, T): the "
                    "(M, D) rows go back with .view(B, T, D).transpose(1, 2), not .view(B, D, T)")
    if not isinstance(commitment, torch.Tensor) or commitment.numel() != 1:
        raise Wrong("the commitment loss should be a scalar tensor (the mean of (x − q)² over all elements)")
    if abs(float(commitment) - COMMITMENT) > 1e-5:
        raise Wrong(f"commitment loss {float(commitment):.5f}, expected {COMMITMENT:.5f} = mean over the 12 "
                    "elements of (x − q)², q the chosen entries (F.mse_loss(x, quantized.detach()))")


def check_straight_through_gradient():
    """The gradient of the quantized output reaches x unchanged (∂q_st/∂x = identity)."""
    weights = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0))
    x = latents().requires_grad_(True)
    with spied_quantizer():
        quantized, _, _ = ready_quantizer()(x)
    if not quantized.requires_grad:
        raise Wrong("the quantized output carries no gradient back to x: the straight-through estimator "
                    "x + (quantized − x).detach() is missing")
    (quantized * weights).sum().backward()
    if x.grad is None or not torch.count_nonzero(x.grad):
        raise Wrong("x gets a zero gradient through the quantized output: in the straight-through estimator "
                    "only (quantized − x) is detached, x + (quantized − x).detach()")
    if not torch.allclose(x.grad, weights):
        raise Wrong("the gradient w.r.t. x is not the incoming gradient itself: the straight-through estimator "
                    "treats the quantizer as the identity in the backward pass")


def check_commitment_gradient():
    """The commitment loss pulls x towards its entry: ∂L_c/∂x = 2 (x − q) / (B·D·T)."""
    x = latents().requires_grad_(True)
    with spied_quantizer():
        _, _, commitment = ready_quantizer()(x)
    if not commitment.requires_grad:
        raise Wrong("the commitment loss gives the encoder no gradient: it is ||x − sg[q]||², so detach the "
                    "quantized vector, not x (F.mse_loss(x, quantized.detach()))")
    commitment.backward()
    expected = 2 * (latents() - CODEBOOK[CODES].transpose(1, 2)) / 12
    if x.grad is None or not torch.count_nonzero(x.grad):
        raise Wrong("the commitment loss's gradient w.r.t. x is zero: is it computed against the straight-through "
                    "output (whose gradient cancels x's) instead of quantized.detach()?")
    if not torch.allclose(x.grad, expected, atol=1e-6):
        raise Wrong("the commitment loss's gradient w.r.t. x should be 2 (x − q) / 12, q the chosen entries in x's "
                    "(B, D, T) layout: F.mse_loss(x, quantized.detach()), the mean over all elements")


def check_eval_leaves_the_codebook_alone():
    """Eval mode calls none of init_kmeans, ema_update, revive_dead_codes."""
    with spied_quantizer() as calls:
        vq = ready_quantizer()
        vq.initialized.fill_(False)  # even an uninitialised codebook is not initialised in eval
        vq(latents())
    if calls:
        raise Wrong(f"in eval mode forward called {[name for name, _, _ in calls]}: encoding must not change the "
                    "codebook; guard the updates with `if self.training`")


def check_training_updates_in_order():
    """Training mode: init_kmeans once while uninitialised, then ema_update(rows, indices), then revival."""
    rows = POINTS.reshape(-1, 2)  # the vectors x[b, :, t], row b·T + t
    with spied_quantizer() as calls:
        vq = rvq.VectorQuantizer(dim=2, codebook_size=4).train()
        _, codes, _ = vq(latents())
        first = list(calls)
        calls.clear()
        vq(latents())
        second = list(calls)
    names = [name for name, _, _ in first]
    if "init_kmeans" not in names:
        raise Wrong("the first training batch must initialise the codebook: call self.init_kmeans(rows) "
                    "while self.initialized is False")
    if names != ["init_kmeans", "ema_update", "revive_dead_codes"]:
        if names == ["init_kmeans", "revive_dead_codes", "ema_update"]:
            raise Wrong("revive_dead_codes must run after ema_update: the revival sets the dead entries' statistics, "
                        "and the EMA step of the same batch is applied before it (see revive_dead_codes' docstring)")
        raise Wrong(f"a training step called {names}; expected init_kmeans (first batch only), then ema_update, "
                    "then revive_dead_codes, each once")
    _, init_rows, _ = first[0]
    if tuple(init_rows.shape) != (6, 2):
        raise Wrong(f"init_kmeans should get the M = B·T = 6 latent vectors as rows (6, 2), "
                    f"got {tuple(init_rows.shape)}")
    if not torch.equal(torch.unique(init_rows, dim=0), torch.unique(rows, dim=0)):
        raise Wrong("init_kmeans got rows that are not the latent vectors x[b, :, t]: transpose (B, D, T) to "
                    "(B, T, D) before flattening to (B·T, D)")
    _, ema_rows, ema_indices = first[1]
    if not torch.equal(ema_rows, rows) or not torch.equal(ema_indices, CODES.reshape(-1)):
        raise Wrong("ema_update should get the (B·T, D) rows and the indices assign gave them, "
                    "ema_update(rows, indices), row b·T + t being x[b, :, t]")
    if not torch.equal(first[2][1], rows):
        raise Wrong("revive_dead_codes should get the same (B·T, D) rows, revive_dead_codes(rows)")
    if [name for name, _, _ in second] != ["ema_update", "revive_dead_codes"]:
        raise Wrong(f"the second training batch called {[name for name, _, _ in second]}: init_kmeans runs once, "
                    "only while self.initialized is False")
    if not torch.equal(codes, CODES):
        raise Wrong(f"codes are {codes.tolist()} after initialisation, expected {CODES.tolist()}: assign after "
                    "init_kmeans, so the rows are quantized with the initialised codebook")
