"""Codebook interleaving patterns (paper §2.2, Figure 1, Table 3).

The codec turns audio into K parallel streams of tokens, `codes` (B, K, T): at every frame t there is
one token per codebook k. A language model emits one *sequence step* at a time, so we must decide
which of the K·T tokens it predicts together at each step. The paper formalises this (§2.2):

    Ω = {(k, t) : k ∈ {1..K}, t ∈ {1..T}}           every token of the clip
    P = (P_0, P_1, ..., P_S)  with  P_0 = ∅  and  P a partition of Ω

and the model predicts *in parallel* all tokens of P_s, conditioned on all tokens of P_0, ..., P_{s-1}.
Few steps = fast decoding but strong independence assumptions (all of P_s are sampled independently
given the past); one token per step = exact autoregression but K times slower. Table 3 compares six
such patterns; this file implements all six with the layouts of Figure 1.

A pattern here is exactly that list: `layout(T)` returns, for every sequence step s, the (k, t)
coordinates it holds. Step 0 is P_0 = ∅, the *start step*: it holds only special tokens and its output
predicts step 1. Everything else (build, inverse, the logits shift, masks) is derived from the layout
once per T and cached as index tensors, so the hot path is a single scatter / gather.

Shape letters: B batch, K codebooks (`n_q`), T frames, S pattern steps (incl. the start step),
card = codebook_size. Note: the paper's S is the index of the last step, ours counts steps, so our
S is the paper's S + 1.

Data flow (DESIGN.md):
    codes (B, K, T) ──build──▶ sequence (B, K, S) ──LM──▶ logits (B, K, S, card)
    ──revert_logits──▶ logits (B, K, T, card) aligned with codes, for the masked cross-entropy.
The special (empty) token is `codebook_size`; the LM's embeddings have one extra row for it.

Run `python patterns.py` to print every layout as a grid, like Figure 1.
"""
import torch


class Pattern:
    """A codebook interleaving pattern: subclasses define `layout(T)`, the rest is derived here.

    Args:
        n_q: K, the number of codebooks.
    """

    name = "pattern"

    def __init__(self, n_q: int):
        if n_q < 1:
            raise ValueError(f"n_q must be >= 1, got {n_q}")
        self.n_q = n_q
        self._step_cache = {}  # (T, device) -> step_of (K, T): computed once per length, reused

    # ---- what a subclass defines ---------------------------------------------------------------
    def layout(self, T: int) -> list:
        """For each step s = 0..S-1, the list of (k, t) it holds. Step 0 must be empty (P_0 = ∅)."""
        raise NotImplementedError

    def num_steps(self, T: int) -> int:
        """S, the number of sequence steps (start step included) for T frames."""
        return len(self.layout(T))

    # ---- derived ---------------------------------------------------------------------------------
    def decoding_steps(self, T: int) -> int:
        """Forward passes needed to generate T frames: every step but the given start step (Table 3)."""
        return self.num_steps(T) - 1

    def num_frames(self, S: int) -> int:
        """Inverse of `num_steps`: the T whose sequence has S steps.

        All six layouts have S = a·T + b (a steps per frame, b extra), so two evaluations solve it.
        """
        b = self.num_steps(0)
        a = self.num_steps(1) - b
        T = (S - b) // a
        if T < 0 or self.num_steps(T) != S:
            raise ValueError(f"{self.name}: no number of frames gives a sequence of {S} steps "
                             f"(S = {a}·T + {b} for this pattern with n_q={self.n_q})")
        return T

    def step_of(self, T: int, device=None) -> torch.Tensor:
        """(K, T) int64: the sequence step s at which token (k, t) sits. Cached per (T, device).

        This is the one index tensor everything else uses; it is built from the layout (a Python
        loop, once per T) and checked to be a valid pattern: step 0 empty, every (k, t) exactly once,
        and no step holding two tokens of the same codebook (each step has one slot per codebook).
        """
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (T, device)
        if key not in self._step_cache:
            K, layout = self.n_q, self.layout(T)
            if layout[0]:
                raise AssertionError(f"{self.name}: step 0 must be the empty start step, holds {layout[0]}")
            step = [[-1] * T for _ in range(K)]
            for s, cells in enumerate(layout):
                rows = [k for k, _ in cells]
                if len(set(rows)) != len(rows):
                    raise AssertionError(f"{self.name}: step {s} holds two tokens of one codebook: {cells}")
                for k, t in cells:
                    if step[k][t] != -1:
                        raise AssertionError(f"{self.name}: token (k={k}, t={t}) appears twice")
                    step[k][t] = s
            step = torch.tensor(step, dtype=torch.long).reshape(K, T)
            if (step < 0).any():
                raise AssertionError(f"{self.name}: some tokens are never placed (not a partition of Ω)")
            self._step_cache[key] = step.to(device)
        return self._step_cache[key]

    def build(self, codes: torch.Tensor, special: int):
        """Lay codes out over sequence steps; empty cells get the special token.

        Args:
            codes: (B, K, T) int64 tokens (any values; the sampler uses -1 for "not yet known").
            special: the special token id (= codebook_size).
        Returns:
            sequence (B, K, S) and mask (K, S) bool, True where a real token sits (K·T of them).
        """
        if codes.dim() != 3 or codes.shape[1] != self.n_q:
            raise ValueError(f"codes must be (B, K={self.n_q}, T), got {tuple(codes.shape)}")
        B, K, T = codes.shape
        step = self.step_of(T, codes.device)  # (K, T)
        sequence = codes.new_full((B, K, self.num_steps(T)), special)
        # sequence[b, k, step[k, t]] = codes[b, k, t]: one scatter along the step axis.
        sequence.scatter_(2, step.expand(B, K, T), codes)  # (B, K, T) -> (B, K, S)
        mask = torch.zeros(K, self.num_steps(T), dtype=torch.bool, device=codes.device)
        mask.scatter_(1, step, True)  # (K, S): True at the K·T real-token cells
        return sequence, mask

    def revert(self, sequence: torch.Tensor) -> torch.Tensor:
        """Exact inverse of `build`: sequence (B, K, S) -> codes (B, K, T)."""
        if sequence.dim() != 3 or sequence.shape[1] != self.n_q:
            raise ValueError(f"sequence must be (B, K={self.n_q}, S), got {tuple(sequence.shape)}")
        B, K, S = sequence.shape
        T = self.num_frames(S)
        # codes[b, k, t] = sequence[b, k, step[k, t]]: one gather; special cells are simply not read.
        return sequence.gather(2, self.step_of(T, sequence.device).expand(B, K, T))  # (B, K, S) -> (B, K, T)

    def revert_logits(self, logits: torch.Tensor):
        """Align the LM's outputs with the codes they predict.

        The model output at step s predicts the tokens of step s+1 (P_{s+1} given P_0..P_s), so the
        logits for token (k, t), which sits at step s = step_of[k, t], are read at output step s - 1.
        Step 0 is the start step, so s - 1 >= 0 for every token: `valid` is all True for these six
        layouts; it is returned so the loss mask always comes from the pattern alone.

        Args:
            logits: (B, K, S, card) one output per sequence step and codebook.
        Returns:
            logits (B, K, T, card) and valid (K, T) bool.
        """
        if logits.dim() != 4 or logits.shape[1] != self.n_q:
            raise ValueError(f"logits must be (B, K={self.n_q}, S, card), got {tuple(logits.shape)}")
        B, K, S, card = logits.shape
        T = self.num_frames(S)
        source = self.step_of(T, logits.device) - 1  # (K, T): output step that predicts (k, t)
        valid = source >= 0
        index = source.clamp(min=0)[None, :, :, None].expand(B, K, T, card)
        return logits.gather(2, index), valid  # (B, K, S, card) -> (B, K, T, card)

    def positions(self, T: int, device=None) -> torch.Tensor:
        """(K, S) int64: the frame t of the real token at (k, s), or -1 where the cell is special.

        A sampler uses it to know which rows of step s hold real tokens and which frame they belong
        to, e.g. to never overwrite the frames of a prompt (frame < prompt length).
        """
        step = self.step_of(T, device)  # (K, T)
        frames = torch.full((self.n_q, self.num_steps(T)), -1, dtype=torch.long, device=step.device)
        return frames.scatter_(1, step, torch.arange(T, device=step.device).expand(self.n_q, T))

    def grid(self, T: int) -> str:
        """The layout as text, rows k1..kK, columns s0..: `t3` = frame 3 of that codebook, `.` = special."""
        frames = self.positions(T)
        width = max(3, len(f"t{T - 1}") + 1, len(f"s{frames.shape[1] - 1}") + 1)
        lines = ["    " + "".join(f"s{s}".ljust(width) for s in range(frames.shape[1]))]
        for k in range(self.n_q):
            cells = ("." if t < 0 else f"t{t}" for t in frames[k].tolist())
            lines.append(f"k{k + 1}".ljust(4) + "".join(c.ljust(width) for c in cells))
        return "\n".join(line.rstrip() for line in lines)


class DelayPattern(Pattern):
    """Codebook k is shifted right by `delays[k]` steps: token (k, t) sits at step 1 + t + delays[k].

    S = 1 + T + max(delays). Three of the paper's patterns are delay patterns (K=4, T=3 shown):

    parallel, delays (0, 0, 0, 0): all K tokens of a frame in one step; S = 1 + T.
            s0 s1 s2 s3
        k1  .  t0 t1 t2
        k2  .  t0 t1 t2
        k3  .  t0 t1 t2
        k4  .  t0 t1 t2

    delay, delays (0, 1, 2, 3), the paper's default: codebook k of frame t is predicted once
    codebooks < k of that frame are known; S = T + K.
            s0 s1 s2 s3 s4 s5 s6
        k1  .  t0 t1 t2 .  .  .
        k2  .  .  t0 t1 t2 .  .
        k3  .  .  .  t0 t1 t2 .
        k4  .  .  .  .  t0 t1 t2

    partial-delay, delays (0, 1, 1, 1): the first (coarsest) codebook leads, the rest follow together;
    S = 2 + T.
            s0 s1 s2 s3 s4
        k1  .  t0 t1 t2 .
        k2  .  .  t0 t1 t2
        k3  .  .  t0 t1 t2
        k4  .  .  t0 t1 t2
    """

    def __init__(self, n_q: int, delays, name: str = "delay"):
        super().__init__(n_q)
        if len(delays) != n_q or min(delays) < 0:
            raise ValueError(f"need {n_q} non-negative delays, got {list(delays)}")
        self.delays, self.name = list(delays), name

    def num_steps(self, T: int) -> int:
        return 1 + T + max(self.delays)

    def layout(self, T: int) -> list:
        layout = [[] for _ in range(self.num_steps(T))]
        for t in range(T):
            for k, delay in enumerate(self.delays):
                layout[1 + t + delay].append((k, t))
        return layout


class FlattenPattern(Pattern):
    """One token per step, frame by frame, coarse to fine: (k, t) at step 1 + t·K + k; S = 1 + K·T.

    Exact autoregression over all K·T tokens (no independence assumption) but K times more steps.
            s0 s1 s2 s3 s4 s5 s6 s7 s8 s9 s10 s11 s12
        k1  .  t0 .  .  .  t1 .  .  .  t2 .   .   .
        k2  .  .  t0 .  .  .  t1 .  .  .  t2  .   .
        k3  .  .  .  t0 .  .  .  t1 .  .  .   t2  .
        k4  .  .  .  .  t0 .  .  .  t1 .  .   .   t2
    """

    name = "flatten"

    def num_steps(self, T: int) -> int:
        return 1 + self.n_q * T

    def layout(self, T: int) -> list:
        layout = [[] for _ in range(self.num_steps(T))]
        for t in range(T):
            for k in range(self.n_q):
                layout[1 + t * self.n_q + k].append((k, t))
        return layout


class PartialFlattenPattern(Pattern):
    """Per frame, two steps: codebook 1 alone, then codebooks 2..K together; S = 1 + 2T.

    (0, t) at step 1 + 2t, (k >= 1, t) at step 2 + 2t.
            s0 s1 s2 s3 s4 s5 s6
        k1  .  t0 .  t1 .  t2 .
        k2  .  .  t0 .  t1 .  t2
        k3  .  .  t0 .  t1 .  t2
        k4  .  .  t0 .  t1 .  t2
    """

    name = "partial-flatten"

    def num_steps(self, T: int) -> int:
        return 1 + 2 * T

    def layout(self, T: int) -> list:
        layout = [[] for _ in range(self.num_steps(T))]
        for t in range(T):
            layout[1 + 2 * t].append((0, t))
            layout[2 + 2 * t].extend((k, t) for k in range(1, self.n_q))
        return layout


class VallEPattern(Pattern):
    """VALL-E's coarse-first order: all T tokens of codebook 1, then codebooks 2..K in parallel.

    (0, t) at step 1 + t, (k >= 1, t) at step 1 + T + t; S = 1 + 2T. (VALL-E itself uses a second,
    non-autoregressive model for codebooks 2..K; here one model does both halves.)
            s0 s1 s2 s3 s4 s5 s6
        k1  .  t0 t1 t2 .  .  .
        k2  .  .  .  .  t0 t1 t2
        k3  .  .  .  .  t0 t1 t2
        k4  .  .  .  .  t0 t1 t2
    """

    name = "vall-e"

    def num_steps(self, T: int) -> int:
        return 1 + 2 * T

    def layout(self, T: int) -> list:
        layout = [[] for _ in range(self.num_steps(T))]
        for t in range(T):
            layout[1 + t].append((0, t))
            layout[1 + T + t].extend((k, t) for k in range(1, self.n_q))
        return layout


class ChannelsPattern(Pattern):
    """A mono pattern over the codebooks of several channels (the stereo MusicGen models): the K·C streams
    are interleaved by level, k1 left, k1 right, k2 left, ..., and both channels of level k sit where the
    mono pattern puts level k. Stereo delay, C = 2, K = 2 (left and right of a level delayed alike):
            s0 s1 s2 s3 s4
        k1L .  t0 t1 t2 .
        k1R .  t0 t1 t2 .
        k2L .  .  t0 t1 t2
        k2R .  .  t0 t1 t2
    """

    def __init__(self, mono: Pattern, channels: int):
        super().__init__(mono.n_q * channels)
        self.mono, self.channels, self.name = mono, channels, mono.name

    def num_steps(self, T: int) -> int:
        return self.mono.num_steps(T)

    def layout(self, T: int) -> list:
        return [[(k * self.channels + c, t) for k, t in cells for c in range(self.channels)]
                for cells in self.mono.layout(T)]


PATTERN_NAMES = ("parallel", "delay", "partial-delay", "flatten", "partial-flatten", "vall-e")


def make_pattern(name: str, n_q: int, channels: int = 1) -> Pattern:
    """The pattern called `name` (one of PATTERN_NAMES, as in Table 3) for n_q codebooks; with channels
    > 1, n_q counts the codebooks of all channels and each level's channels share the mono placement."""
    if channels > 1:
        if n_q % channels:
            raise ValueError(f"{n_q} codebooks do not split into {channels} channels")
        return ChannelsPattern(make_pattern(name, n_q // channels), channels)
    if name == "parallel":
        return DelayPattern(n_q, [0] * n_q, name)
    if name == "delay":
        return DelayPattern(n_q, list(range(n_q)), name)
    if name == "partial-delay":
        return DelayPattern(n_q, [0] + [1] * (n_q - 1), name)
    if name == "flatten":
        return FlattenPattern(n_q)
    if name == "partial-flatten":
        return PartialFlattenPattern(n_q)
    if name == "vall-e":
        return VallEPattern(n_q)
    raise ValueError(f"unknown pattern {name!r}; choose one of {', '.join(PATTERN_NAMES)}")


if __name__ == "__main__":
    K, T = 4, 4
    print(f"Codebook interleaving patterns (paper Figure 1), K={K} codebooks, T={T} frames.")
    print("Rows k1..k4 are the codebooks, columns s0, s1, ... the sequence steps; a cell tN holds that")
    print("codebook's token of frame N, '.' the special (empty) token. Step s0 is the start step, and the")
    print("model's output at step s predicts the tokens of step s+1.\n")
    for pattern_name in PATTERN_NAMES:
        pattern = make_pattern(pattern_name, K)
        print(f"{pattern_name}: S = {pattern.num_steps(T)} steps, {pattern.decoding_steps(T)} decoding steps "
              f"(for 10 s at 50 Hz, T=500: {pattern.decoding_steps(500)})")
        print(pattern.grid(T), end="\n\n")
