"""Exercise 13 (§2.3): the training loss, cross-entropy per codebook.

The LM is trained to give each real token a high probability: for codebook k the cross-entropy over its
real positions, then the mean over the K codebooks,

    CE_k = mean_{b, t} −log softmax(z_{b,k,t})[codes[b, k, t]],          loss = (1/K) Σ_k CE_k,

where z_{b,k,t} are the logits that predict token (k, t): the pattern lays the codes out
(self.pattern.build(codes, self.special)), the model reads that sequence (self(sequence, conditions),
with conditions = self.conditions(text, text_mask, chroma, S)), and self.pattern.revert_logits applies
the shift "output s predicts step s+1", giving (B, K, T, card) and valid (K, T): only valid positions
count. The tiny recipe weighs the first start_frames frames by start_weight (cfg; 1 = the paper's plain
mean): with w_t = start_weight for t < start_frames, else 1, codebook k's objective is

    Σ_{b,t valid} w_t·ce_{b,k,t} / Σ_{b,t valid} w_t.

Write `LMModel.compute_loss` in lm.py: it returns the objective (a scalar, mean over codebooks of the
weighted CEs, with its graph) and the K *plain* cross-entropies CE_k, detached, for logging.
"""
import torch

import lm
from course.stand_ins import StandInChroma
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=13, title="The per-codebook cross-entropy", section="§2.3",
    blanks=[("lm.py", "LMModel.compute_loss")],
    hints=["Three calls give the logits aligned with the codes: sequence, _ = self.pattern.build(codes, self.special); "
           "logits = self(sequence, self.conditions(text, text_mask, chroma, sequence.shape[-1])); "
           "logits, valid = self.pattern.revert_logits(logits).",
           "Per codebook k: F.cross_entropy(..., reduction='none') on logits[:, k][:, valid[k]] flattened to "
           "(N, card) against codes[:, k][:, valid[k]] flattened to (N,) gives one ce per position.",
           "Frame weights: torch.ones(T), the first self.cfg.start_frames set to self.cfg.start_weight; repeat "
           "the valid ones over the batch. The objective divides by the sum of the weights, not by the count.",
           "Return (torch.stack(objectives).mean(), torch.stack(plain_means)) with the plain means .detach()ed."],
)

CARD = 5


class DelayByHand:
    """The delay pattern written out here (build and revert_logits are exercises 7 and 8): token (k, t)
    at step 1 + t + k, predicted by the output of step t + k. `invalid` lists (k, t) said to have no
    prediction (valid False), to see that the loss leaves them out."""

    def __init__(self, n_q, invalid=()):
        self.n_q, self.invalid = n_q, set(invalid)
        self.built = None

    def build(self, codes, special):
        B, K, T = codes.shape
        sequence = torch.full((B, K, T + K), special, dtype=codes.dtype)
        mask = torch.zeros(K, T + K, dtype=torch.bool)
        for k in range(K):
            for t in range(T):
                sequence[:, k, 1 + t + k] = codes[:, k, t]
                mask[k, 1 + t + k] = True
        self.built = sequence.clone()
        return sequence, mask

    def revert_logits(self, logits):
        B, K, S, card = logits.shape
        T = S - K
        out = torch.stack([torch.stack([logits[:, k, t + k] for t in range(T)], dim=1) for k in range(K)], dim=1)
        valid = torch.tensor([[(k, t) not in self.invalid for t in range(T)] for k in range(K)])
        return out, valid  # (B, K, T, card), (K, T)


class Setup:
    """A tiny LMModel whose pattern, conditions and network are stand-ins written here, so the loss is graded
    on fixed, known logits (the transformer's parts are other exercises)."""

    def __init__(self, B=2, K=3, T=5, start_frames=10, start_weight=1.0, invalid=(), seed=0):
        cfg = lm.LMConfig(n_q=K, codebook_size=CARD, dim=4, n_layers=1, n_heads=2, ffn_dim=8, window_seconds=1.0,
                          text_encoder="scratch", text_vocab_size=10, text_dim=4, text_layers=1, text_heads=2,
                          melody_fusion="none", start_frames=start_frames, start_weight=start_weight)
        saved = lm.check_input_codebooks, lm.ChromaExtractor
        lm.check_input_codebooks, lm.ChromaExtractor = (lambda cfg: None), StandInChroma
        try:
            torch.manual_seed(0)
            self.model = lm.LMModel(cfg)
        finally:
            lm.check_input_codebooks, lm.ChromaExtractor = saved
        generator = torch.Generator().manual_seed(seed)
        self.codes = torch.randint(0, CARD, (B, K, T), generator=generator)
        # The network's output: fixed logits (B, K, S, card), S = T + K, a leaf so gradients can be read.
        self.logits = (3 * torch.randn(B, K, T + K, CARD, generator=generator, dtype=torch.float64)).requires_grad_()
        self.text, self.text_mask = torch.randn(B, 2, 4), torch.ones(B, 2, dtype=torch.bool)
        self.chroma, self.conditioned = None, "conditions of the check"
        self.pattern = DelayByHand(K, invalid)
        self.model.pattern = self.pattern
        self.model.forward = self.forward
        self.model.conditions = self.conditions

    def conditions(self, text, text_mask, chroma=None, n_steps=None):
        if text is not self.text or text_mask is not self.text_mask or chroma is not self.chroma:
            raise Wrong("self.conditions must get the text, text_mask and chroma that compute_loss was given")
        if n_steps != self.logits.shape[2]:
            raise Wrong(f"self.conditions got n_steps={n_steps}, expected S = {self.logits.shape[2]}, the steps of "
                        "the built sequence (sequence.shape[-1]); the 'sum' melody fusion needs it")
        return self.conditioned

    def forward(self, sequence, conditions, cache=None):
        if self.pattern.built is None or not torch.equal(sequence, self.pattern.built):
            raise Wrong("the model must read the pattern's sequence (B, K, S), self.pattern.build(codes, self.special), "
                        "not the codes themselves")
        if conditions is not self.conditioned:
            raise Wrong("the model must get the conditions that self.conditions(...) returned")
        return self.logits

    def loss(self):
        return self.model.compute_loss(self.codes, self.text, self.text_mask, self.chroma)

    def expected(self, weighted=True):
        """By the definition, one token at a time: (objective, per-codebook plain CE)."""
        B, K, T = self.codes.shape
        cfg = self.model.cfg
        objectives, plain = [], []
        for k in range(K):
            total, weights, ce_sum, count = 0.0, 0.0, 0.0, 0
            for b in range(B):
                for t in range(T):
                    if (k, t) in self.pattern.invalid:
                        continue
                    z = self.logits[b, k, t + k].detach()  # the output of step t + k predicts (k, t)
                    ce = float(torch.logsumexp(z, 0) - z[self.codes[b, k, t]])  # −log softmax(z)[code]
                    w = cfg.start_weight if (weighted and t < cfg.start_frames) else 1.0
                    total, weights, ce_sum, count = total + w * ce, weights + w, ce_sum + ce, count + 1
            objectives.append(total / weights)
            plain.append(ce_sum / count)
        return sum(objectives) / K, plain


def returned(setup):
    got = setup.loss()
    K = setup.codes.shape[1]
    if not isinstance(got, tuple) or len(got) != 2:
        raise Wrong(f"compute_loss must return two things, (objective, per-codebook CE (K,)); got {type(got).__name__}")
    objective, per_codebook = got
    if not isinstance(objective, torch.Tensor) or objective.dim() != 0:
        raise Wrong(f"the objective should be a scalar tensor, got {tuple(getattr(objective, 'shape', ()))}")
    if not isinstance(per_codebook, torch.Tensor) or tuple(per_codebook.shape) != (K,):
        raise Wrong(f"the per-codebook CE should be (K,) = ({K},), got {tuple(getattr(per_codebook, 'shape', ()))}")
    return objective, per_codebook


def value(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def near(a, b) -> bool:
    return abs(value(a) - value(b)) < 1e-5 * max(1.0, abs(value(b)))


def check_plain_mean():
    """start_weight = 1: the objective is the mean over codebooks of CE_k, and per_codebook the K values CE_k."""
    setup = Setup()
    objective, per_codebook = returned(setup)
    expected, plain = setup.expected()
    K = len(plain)
    for k in range(K):
        if not near(per_codebook[k], plain[k]):
            raise Wrong(f"the CE of codebook {k} is {value(per_codebook[k]):.4f}, expected {plain[k]:.4f}: is it "
                        "the mean of −log softmax over that codebook's real tokens, the logits taken after "
                        "self.pattern.revert_logits (output s predicts step s+1)?")
    if near(objective, sum(plain)):
        raise Wrong(f"the objective is {value(objective):.4f}, the CEs summed over codebooks: the loss is their "
                    f"mean, {expected:.4f}")
    if not near(objective, expected):
        raise Wrong(f"the objective is {value(objective):.4f}, expected the mean of the per-codebook CEs, {expected:.4f}")
    if per_codebook.requires_grad:
        raise Wrong("the per-codebook CEs require grad: they are for logging and evaluation, .detach() them")
    if not objective.requires_grad:
        raise Wrong("the objective does not require grad: training backpropagates through it")


def check_gradient():
    """objective.backward() puts, on the logits of each predicted token, (softmax − one-hot)/(B·T·K)."""
    setup = Setup(B=2, K=2, T=3)
    objective, _ = returned(setup)
    objective.backward()
    B, K, T = setup.codes.shape
    expected = torch.zeros_like(setup.logits)
    for b in range(B):
        for k in range(K):
            for t in range(T):
                z = setup.logits[b, k, t + k].detach()
                expected[b, k, t + k] = (torch.softmax(z, 0) - torch.eye(CARD, dtype=z.dtype)[setup.codes[b, k, t]]) / (B * T * K)
    grad = setup.logits.grad
    if grad is None or not torch.allclose(grad, expected, atol=1e-7):
        raise Wrong("the objective's gradient on the logits is not the cross-entropy's (softmax − one-hot)/N: "
                    "is the loss computed from the model's logits, in float, through revert_logits?")


def check_start_weight():
    """start_frames=2, start_weight=3: frames 0, 1 count 3 times in the objective; per_codebook stays plain."""
    setup = Setup(T=5, start_frames=2, start_weight=3.0, seed=1)
    objective, per_codebook = returned(setup)
    expected, plain = setup.expected()
    unweighted, _ = setup.expected(weighted=False)
    for k in range(len(plain)):
        if not near(per_codebook[k], plain[k]):
            raise Wrong(f"the CE of codebook {k} is {value(per_codebook[k]):.4f}, expected the plain mean "
                        f"{plain[k]:.4f}: per_codebook is the unweighted cross-entropy (logging and evaluation "
                        "compare it across runs)")
    if near(objective, unweighted):
        raise Wrong(f"the objective {value(objective):.4f} is the plain mean: frames t < start_frames are weighed by "
                    f"start_weight (self.cfg.start_weight = 3 here), expected {expected:.4f}")
    if not near(objective, expected):
        raise Wrong(f"the objective is {value(objective):.4f}, expected {expected:.4f} = Σ w_t·ce / Σ w_t per codebook: "
                    "is each codebook's weighted sum divided by the sum of the weights (not by the count)?")


def check_start_frames_beyond_the_window():
    """start_frames=10 > T=4, start_weight=2: every frame weighs the same, so the objective is the plain mean."""
    setup = Setup(T=4, start_frames=10, start_weight=2.0, seed=2)
    objective, _ = returned(setup)
    expected, _ = setup.expected()
    if not near(objective, expected):
        raise Wrong(f"the objective is {value(objective):.4f}, expected {expected:.4f}: with all T frames weighed "
                    "by start_weight, Σ w·ce / Σ w is the plain mean; divide by the sum of the weights, not by the count")


def check_valid_positions_only():
    """Tokens the pattern marks invalid (no prediction) are left out of both the objective and per_codebook."""
    setup = Setup(T=4, start_frames=2, start_weight=2.0, invalid=[(0, 0), (2, 0), (2, 3)], seed=3)
    objective, per_codebook = returned(setup)
    expected, plain = setup.expected()
    for k in range(len(plain)):
        if not near(per_codebook[k], plain[k]):
            raise Wrong(f"codebook {k}: CE {value(per_codebook[k]):.4f}, expected {plain[k]:.4f} over the valid "
                        "positions only: select logits[:, k][:, valid[k]] and codes[:, k][:, valid[k]] (valid from "
                        "revert_logits)")
    if not near(objective, expected):
        raise Wrong(f"the objective is {value(objective):.4f}, expected {expected:.4f}: the frame weights must be "
                    "those of the valid positions, frame_weight[valid[k]], repeated over the batch")
