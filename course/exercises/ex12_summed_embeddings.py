"""Exercise 12 (§2.3): the K streams of a step become one input vector.

At every sequence step the pattern gives K tokens, one per codebook (a real token, or the special token
= codebook_size in an empty cell). MusicGen gives each codebook its own embedding table of
codebook_size + 1 rows (the last row: the special token) and feeds the transformer their *sum*:

    x_s = Σ_{k < K_in} Emb_k(sequence[:, k, s]),          sequence (B, K, S) -> x (B, S, D).

The paper sums all K codebooks (K_in = K); `LMConfig.input_codebooks` may make the LM read fewer, the
first K_in (self.embeddings holds exactly K_in tables; the K heads still predict all K). Write
`LMModel.embed` in lm.py. A token outside [0, codebook_size] is a bug upstream (e.g. the sampler's -1 for
"not yet known" fed to the LM): raise ValueError naming the range, before any table is read.
"""
import torch

import lm
from course.stand_ins import StandInChroma
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=12, title="Summed codebook embeddings", section="§2.3",
    blanks=[("lm.py", "LMModel.embed")],
    hints=["self.embeddings is an nn.ModuleList of K_in nn.Embedding tables; table k applied to sequence[:, k] "
           "(B, S) gives (B, S, D).",
           "Sum over the tables, not over all K rows of the sequence: enumerate(self.embeddings) stops at K_in.",
           "Check the range first: torch.aminmax(sequence) gives the smallest and largest token; the special "
           "token self.special (= codebook_size) is allowed, anything above or below 0 is a ValueError."],
)


def tiny_lm(n_q=3, codebook_size=4, dim=4, input_codebooks=None):
    """A tiny LMModel, built without the code of other exercises (the pattern check and the chroma
    extractor are replaced while it is built), its tables set to known values:
    Emb_k(j) = (j + 1)·10^k · (1, 2, ..., D), so every sum says which token each codebook gave."""
    cfg = lm.LMConfig(n_q=n_q, codebook_size=codebook_size, dim=dim, n_layers=1, n_heads=2, ffn_dim=8,
                      window_seconds=1.0, text_encoder="scratch", text_vocab_size=10, text_dim=4, text_layers=1,
                      text_heads=2, melody_fusion="none", input_codebooks=input_codebooks)
    saved = lm.check_input_codebooks, lm.ChromaExtractor
    lm.check_input_codebooks, lm.ChromaExtractor = (lambda cfg: None), StandInChroma
    try:
        torch.manual_seed(0)
        model = lm.LMModel(cfg)
    finally:
        lm.check_input_codebooks, lm.ChromaExtractor = saved
    with torch.no_grad():
        for k, table in enumerate(model.embeddings):
            rows = torch.arange(codebook_size + 1, dtype=torch.float32)[:, None] + 1
            table.weight.copy_(rows * 10 ** k * torch.arange(1, dim + 1, dtype=torch.float32)[None])
    return model


def by_definition(model, sequence, codebooks):
    """Σ_k Emb_k(sequence[:, k, s]) over the first `codebooks` codebooks, one cell at a time."""
    B, _, S = sequence.shape
    x = torch.zeros(B, S, model.embeddings[0].weight.shape[1])
    for b in range(B):
        for s in range(S):
            for k in range(codebooks):
                x[b, s] += model.embeddings[k].weight[int(sequence[b, k, s])].detach()
    return x


def embed_valid(model, sequence):
    """The student's embed on a sequence of valid tokens; a ValueError here is a wrong range check."""
    try:
        return model.embed(sequence)
    except ValueError as error:
        raise Wrong(f"embed refused tokens in [0, {model.special}] ({error}): the special token "
                    f"{model.special} = codebook_size is a valid input, only tokens < 0 or > codebook_size are not")


def compare(model, sequence, codebooks, label):
    got = embed_valid(model, sequence)
    B, K, S = sequence.shape
    expected = by_definition(model, sequence, codebooks)
    D = expected.shape[-1]
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (B, S, D):
        raise Wrong(f"{label}: embed should return (B, S, D) = {(B, S, D)}, got {tuple(getattr(got, 'shape', ()))}: "
                    "one vector per step, the K_in vectors of a step summed")
    got = got.detach().float()
    if torch.allclose(got, expected):
        return
    if torch.allclose(got, expected / codebooks):
        raise Wrong(f"{label}: the embeddings are averaged over the codebooks; x_s is their sum, Σ_k Emb_k")
    if torch.allclose(got, by_definition(model, sequence, 1)):
        raise Wrong(f"{label}: only codebook 1's embedding is in x_s; sum Emb_k(sequence[:, k, s]) over all "
                    f"{codebooks} codebooks read")
    same_table = sum(model.embeddings[0](sequence[:, k]) for k in range(codebooks)).detach()
    if torch.allclose(got, same_table):
        raise Wrong(f"{label}: every codebook is looked up in table 0; codebook k has its own table, "
                    "self.embeddings[k]")
    b, s = [int(i) for i in (~torch.isclose(got, expected).all(-1)).nonzero()[0]]
    raise Wrong(f"{label}: x[{b}, {s}] differs from Σ_k Emb_k(sequence[{b}, k, {s}]) for the tokens "
                f"{sequence[b, :, s].tolist()} (got {got[b, s].tolist()}, expected {expected[b, s].tolist()})")


def check_sum_of_tables():
    """K=3 tables of known values: x_s is the sum of the three rows the tokens pick, the special token included."""
    model = tiny_lm()
    # Two clips in the delay layout: 4 = the special token; every token 0..4 appears.
    sequence = torch.tensor([[[4, 0, 1, 2, 4, 4], [4, 4, 3, 0, 1, 4], [4, 4, 4, 2, 3, 0]],
                             [[4, 3, 3, 1, 4, 4], [4, 4, 2, 2, 0, 4], [4, 4, 4, 1, 1, 3]]])
    compare(model, sequence, 3, "K=3")


def check_gradients_reach_the_tables():
    """The tables are trained: x.sum() gives each row of table k a gradient of (times its token occurs)·(1, ..., 1)."""
    model = tiny_lm()
    sequence = torch.tensor([[[4, 0, 0, 2], [4, 4, 3, 3], [4, 4, 4, 1]]])
    x = embed_valid(model, sequence)
    if not isinstance(x, torch.Tensor) or not x.requires_grad:
        raise Wrong("embed's output does not require grad: look the tokens up through the tables (table(tokens)), "
                    "so training updates the embeddings")
    x.sum().backward()
    for k, table in enumerate(model.embeddings):
        counts = torch.bincount(sequence[0, k], minlength=5).float()  # how often each row is read
        grad = table.weight.grad
        if grad is None or not torch.allclose(grad, counts[:, None].expand(5, 4)):
            raise Wrong(f"table {k} gets the gradient {None if grad is None else grad[:, 0].tolist()} per row, "
                        f"expected the counts of codebook {k}'s tokens {counts.tolist()}: each codebook reads its own "
                        "table, once per step")


def check_fewer_codebooks_read():
    """input_codebooks=2 of K=4: x_s sums the first two codebooks only; codebooks 3, 4 are not read."""
    model = tiny_lm(n_q=4, input_codebooks=2)
    sequence = torch.tensor([[[4, 0, 1, 2, 3, 4], [4, 4, 3, 0, 1, 2], [4, 4, 4, 2, 3, 0], [4, 4, 4, 4, 0, 1]]])
    try:
        compare(model, sequence, 2, "K=4, input_codebooks=2")
    except IndexError as error:
        raise Wrong(f"embed looked for a table that is not there ({error}): with input_codebooks=2 the LM has only "
                    "2 tables; sum over the codebooks read (len(self.embeddings)), not all K") from None


def check_out_of_range_tokens():
    """A token < 0 (the sampler's -1) or > codebook_size raises ValueError before any table is read."""
    model = tiny_lm()
    good = torch.tensor([[[4, 0, 1], [4, 4, 3], [4, 4, 4]]])
    embed_valid(model, good)
    for bad_value, where in ((-1, "-1 (the sampler's 'not known yet')"), (5, "5 = codebook_size + 1")):
        bad = good.clone()
        bad[0, 1, 2] = bad_value
        try:
            model.embed(bad)
        except ValueError:
            continue
        except IndexError:
            raise Wrong(f"a token {where} reached the embedding table (IndexError): check the range first and raise "
                        f"ValueError naming [0, {model.special}]") from None
        raise Wrong(f"a token {where} was embedded without complaint: raise ValueError for tokens outside "
                    f"[0, {model.special}]")
