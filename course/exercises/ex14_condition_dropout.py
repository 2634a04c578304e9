"""Exercise 14 (§3 and §4.1, training for guidance): condition dropout.

Classifier-free guidance mixes the logits of the conditional and the unconditional model,
l = l_null + γ (l_cond − l_null), so one LM must have learnt both p(x | c) and p(x). MusicGen trains it
by dropping the condition: with probability p_cfg (paper: 0.3) a sample gets the null condition, both
the empty description "" and the null melody; otherwise, with probability p_melody (paper: 0.2), only its
melody is dropped, so that text-only prompts stay in distribution for a melody model:

    null ~ Bernoulli(p_cfg),    drop_melody = null ∨ Bernoulli(p_melody),
    P(drop_melody) = p_cfg + (1 − p_cfg) · p_melody.

`ConditionDropout.draw` (written) draws the two (B,) bool masks. Write `ConditionDropout.__call__` in
conditioners.py: given descriptions (a list of B strings) and chroma (B, F, 12), it returns the new
descriptions ("" for each null sample, the others unchanged) and the new chroma (`null_chroma` for each
drop_melody sample, the others unchanged). The masks are `dropped` = (null, drop_melody) when given
(drawn beforehand), else fresh draws self.draw(B, generator). `null_chroma` is (F, 12) or (1, F, 12);
None means all zeros. A chroma whose batch is not len(descriptions) is a ValueError.
"""
import math

import torch

from conditioners import ConditionDropout
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=14, title="Condition dropout for guidance", section="§3, §4.1",
    blanks=[("conditioners.py", "ConditionDropout.__call__")],
    hints=["First B = len(descriptions); raise ValueError if chroma.shape[0] != B. Then "
           "null, drop_melody = self.draw(B, generator) if dropped is None else dropped.",
           "Descriptions: [\"\" if n else d for d, n in zip(descriptions, null.tolist())]; only `null` "
           "empties a description, a melody drop keeps it.",
           "Chroma: make null_chroma (zeros of chroma.shape[1:] when None) a (1, F, 12) tensor of chroma's "
           "dtype, then torch.where(drop_melody[:, None, None], null_chroma, chroma)."],
)


def chroma_batch(B=4, F=3):
    """(B, F, 12) chroma whose samples are all different and none is zero: sample b is b + 1 + small."""
    return (torch.arange(B, dtype=torch.float32)[:, None, None] + 1
            + torch.arange(F * 12, dtype=torch.float32).reshape(1, F, 12) / 100)


def check_given_masks():
    """dropped = (null, drop_melody) by hand: null samples lose both, melody-only ones keep their text."""
    descriptions = ["rock", "jazz", "lofi", "techno"]
    chroma = chroma_batch()
    cases = [([True, False, False, False], [True, False, True, False]),   # sample 2 loses only its melody
             ([False, False, True, True], [False, True, True, True]),     # sample 1 loses only its melody
             ([False, False, False, False], [False, False, False, False])]
    torch.manual_seed(0)  # an answer that ignored `dropped` and drew afresh would still be reproducible
    for null, drop_melody in cases:
        expected = ["" if n else d for d, n in zip(descriptions, null)]
        got_descriptions, got_chroma = ConditionDropout(0.3, 0.2)(
            descriptions, chroma, dropped=(torch.tensor(null), torch.tensor(drop_melody)))
        if list(got_descriptions) != expected:
            melody_only = [b for b in range(4) if drop_melody[b] and not null[b]]
            if [d for b, d in enumerate(got_descriptions) if b not in melody_only] == \
                    [d for b, d in enumerate(expected) if b not in melody_only]:
                raise Wrong(f"with null = {null}, drop_melody = {drop_melody}, descriptions became "
                            f"{list(got_descriptions)}, expected {expected}: sample {melody_only[0]} loses only its "
                            "melody, its description must stay; only `null` empties a description")
            raise Wrong(f"with null = {null}, descriptions became {list(got_descriptions)}, expected {expected}: "
                        "the null samples get \"\", the others keep theirs; is `dropped` used when it is given?")
        if not isinstance(got_chroma, torch.Tensor) or got_chroma.shape != chroma.shape:
            raise Wrong(f"chroma should keep its shape (B, F, 12) = {tuple(chroma.shape)}, got "
                        f"{getattr(got_chroma, 'shape', type(got_chroma))}")
        for b, dropped_here in enumerate(drop_melody):
            if torch.equal(got_chroma[b], torch.zeros(3, 12) if dropped_here else chroma[b]):
                continue
            if not dropped_here and not got_chroma[b].any():
                raise Wrong(f"with drop_melody = {drop_melody}, sample {b} (its melody kept) got the null chroma: is "
                            "torch.where(drop_melody, null_chroma, chroma) the wrong way round?")
            if dropped_here and torch.equal(got_chroma[b], chroma[b]):
                raise Wrong(f"with drop_melody = {drop_melody}, sample {b} kept its chroma; it should get the null "
                            "chroma (zeros when null_chroma is None); is `dropped` used, and torch.where(drop_melody, "
                            "null_chroma, chroma) the right way round?")
            raise Wrong(f"with drop_melody = {drop_melody}, sample {b}'s chroma should be "
                        f"{'the null chroma (zeros)' if dropped_here else 'unchanged'}")


def check_null_chroma_shapes():
    """A null chroma given as (F, 12) or as (1, F, 12) replaces exactly the dropped samples' chroma."""
    chroma = chroma_batch()
    silence = torch.zeros(3, 12)
    silence[:, 0] = 1.0   # the reference extractor's chroma of silence: a one-hot C per frame
    null = torch.tensor([False, True, False, False])
    drop_melody = torch.tensor([False, True, False, True])
    for given in (silence, silence[None]):
        descriptions, got = ConditionDropout()(["a", "b", "c", "d"], chroma, null_chroma=given,
                                               dropped=(null, drop_melody))
        if got.shape != chroma.shape:
            raise Wrong(f"with null_chroma of shape {tuple(given.shape)} the chroma became {tuple(got.shape)}, "
                        f"expected {tuple(chroma.shape)}: make null_chroma (1, F, 12) before torch.where")
        for b in range(4):
            want = silence if drop_melody[b] else chroma[b]
            if not torch.equal(got[b], want):
                raise Wrong(f"with null_chroma of shape {tuple(given.shape)}, sample {b} should "
                            f"{'get the null chroma' if drop_melody[b] else 'keep its chroma'}; is the torch.where "
                            "the right way round (drop_melody selects null_chroma)?")
    wide = chroma.double()
    _, got = ConditionDropout()(["a", "b", "c", "d"], wide, null_chroma=silence, dropped=(null, drop_melody))
    if got.dtype != torch.float64:
        raise Wrong(f"float64 chroma came back as {got.dtype}: convert null_chroma to the chroma's dtype "
                    "(null_chroma.to(chroma)), not the other way round")


def check_batch_mismatch_is_an_error():
    """Two descriptions with chroma of batch 1: a ValueError, not a silent broadcast."""
    try:
        ConditionDropout()(["rock", "jazz"], chroma_batch(B=1), dropped=(torch.tensor([False, True]),
                                                                       torch.tensor([False, True])))
    except ValueError:
        return
    raise Wrong("2 descriptions with chroma of batch 1 should raise ValueError (name both sizes); instead the "
                "(1, F, 12) chroma was broadcast against the masks. Check chroma.shape[0] == len(descriptions) first")


def check_rates_with_a_generator():
    """20 000 samples, seeded: about p_cfg get "", about p_cfg + (1 − p_cfg)·p_melody the null chroma."""
    n, p_cfg, p_melody = 20000, 0.3, 0.2
    descriptions = [f"song {i}" for i in range(n)]
    chroma = torch.ones(n, 1, 12)
    got_descriptions, got_chroma = ConditionDropout(p_cfg, p_melody)(descriptions, chroma,
                                                                     generator=torch.Generator().manual_seed(0))
    null = torch.tensor([d == "" for d in got_descriptions])
    dropped = ~got_chroma.flatten(1).any(1)   # the null chroma is all zeros (null_chroma None)
    kept = [d for d, is_null in zip(got_descriptions, null.tolist()) if not is_null]
    if kept != [d for d, is_null in zip(descriptions, null.tolist()) if not is_null]:
        raise Wrong("some descriptions were changed into something other than \"\"; the others must stay as given")
    if (null & ~dropped).any():
        raise Wrong("a sample got the empty description but kept its melody: a null sample loses both (draw's "
                    "drop_melody includes null); are both masks taken from the same draw?")
    for what, observed, p in (("the null condition (empty description)", float(null.float().mean()), p_cfg),
                              ("the null melody", float(dropped.float().mean()), p_cfg + (1 - p_cfg) * p_melody)):
        tolerance = 5 * math.sqrt(p * (1 - p) / n)   # 5 binomial standard deviations
        if abs(observed - p) > tolerance:
            raise Wrong(f"{observed:.3f} of {n} samples got {what}, expected {p:.3f} ± {tolerance:.3f}: with a "
                        "generator and no `dropped`, use the masks of self.draw(B, generator), null for the "
                        "descriptions and drop_melody for the chroma")
