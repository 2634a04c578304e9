'''Project 20 (§2.2, Figure 1, Table 3): an interleaving pattern of your own.

Table 3 compares six ways to lay K codebooks × T frames out over sequence steps. A pattern is a list
P = (P_0, P_1, ..., P_S), a partition of Ω = {(k, t)}: the model predicts all tokens of P_s together,
given P_0..P_{s-1}. Design a seventh: e.g. "delay by two" (codebook k delayed by 2k steps, token (k, t)
at step 1 + t + 2k), for K = 4, T = 3:

            s0 s1 s2 s3 s4 s5 s6 s7 s8 s9
        k1  .  t0 t1 t2 .  .  .  .  .  .
        k2  .  .  .  t0 t1 t2 .  .  .  .
        k3  .  .  .  .  .  t0 t1 t2 .  .
        k4  .  .  .  .  .  .  .  t0 t1 t2

or a layout of your own invention. Write `MyPattern.layout(T)` and `MyPattern.num_steps(T)` in
course/projects/my_pattern.py (`python -m course start 20` creates it). The checks grade properties,
not one answer: step 0 is the empty start step; every (k, t) is placed exactly once; no step holds two
tokens of one codebook; each codebook's frames come in increasing step order (causal); num_steps(T) =
len(layout(T)) = a·T + b, the last step holding a token; the layout can be built and reverted exactly
(T found from S alone); all this for K = 1..4 and T = 1..6; and, for K = 4, it is none of Table 3's six.
'''
from course.grading import Exercise, Wrong, load_project

TEMPLATE = '''"""Project 20: a codebook interleaving pattern of your own (paper §2.2, Figure 1).

Design a layout that is none of Table 3's six (parallel, delay, partial-delay, flatten, partial-flatten,
vall-e), e.g. "delay by two": codebook k delayed by 2k steps, token (k, t) at step 1 + t + 2k. The rules:

  - layout(T) returns S lists, list s holding the (k, t) of step s (0-based, codebook first);
  - step 0 is the empty start step P_0 = ∅ (its output predicts step 1);
  - every (k, t), k < self.n_q, t < T, sits in exactly one step, and no step holds two tokens of one codebook;
  - within a codebook, frame t comes before frame t + 1 (the model generates left to right);
  - num_steps(T) == len(layout(T)) = a·T + b (Pattern.num_frames inverts it), the last step not empty;
  - MyPattern(n_q) works for any n_q >= 1.

`python -m course.projects.my_pattern` draws your layout as a grid, like Figure 1;
`python -m course check 20` grades it.
"""
from patterns import Pattern


class MyPattern(Pattern):
    """My interleaving pattern: (say here where token (k, t) goes)."""

    name = "my-pattern"

    def num_steps(self, T: int) -> int:
        """S, the number of sequence steps for T frames, the start step included."""
        raise NotImplementedError("project 20: write MyPattern.num_steps (course/projects/my_pattern.py)")

    def layout(self, T: int) -> list:
        """For each step s = 0..S-1, the list of (k, t) it holds; step 0 empty."""
        raise NotImplementedError("project 20: write MyPattern.layout (course/projects/my_pattern.py)")


if __name__ == "__main__":
    print(MyPattern(4).grid(3))
'''

EXERCISE = Exercise(
    number=20, title="A new interleaving pattern", section="§2.2",
    project="course/projects/my_pattern.py", template=TEMPLATE, blanks=[],
    hints=["Start from a formula s(k, t) for the step of token (k, t), e.g. 1 + t + 2k, then "
           "layout = [[] for _ in range(self.num_steps(T))] and append each (k, t) to layout[s(k, t)].",
           "num_steps(T) is 1 + the largest s(k, t): for 1 + t + 2k that is 1 + (T - 1) + 2(K - 1) + 1 = "
           "1 + T + 2(K - 1).",
           "A layout is causal when s(k, t) < s(k, t + 1) for every codebook, and legal when no two tokens of one "
           "codebook share a step: any s(k, t) = 1 + t + d_k with d_k >= 0 is both. Pick delays Table 3 does not have.",
           "MyPattern(4).grid(3) draws the layout (python -m course.projects.my_pattern); compare it with Figure 1."],
)

CODEBOOKS = (1, 2, 3, 4)
FRAMES = (1, 2, 3, 4, 5, 6)


def patterns():
    """MyPattern(K) for K = 1..4 (the student's file, loaded afresh)."""
    module = load_project(EXERCISE)
    if not hasattr(module, "MyPattern"):
        raise Wrong(f"{EXERCISE.project} has no class MyPattern: keep the class name of the template")
    return [module.MyPattern(K) for K in CODEBOOKS]


def layout_of(pattern, T: int) -> list:
    """layout(T) as a list of lists of (int k, int t), after checking its shape."""
    layout = pattern.layout(T)
    label = f"K={pattern.n_q}, T={T}"
    if not isinstance(layout, (list, tuple)) or not all(isinstance(cells, (list, tuple)) for cells in layout):
        raise Wrong(f"{label}: layout must return a list of steps, each a list of (k, t) tuples; got "
                    f"{type(layout).__name__}")
    cleaned = []
    for s, cells in enumerate(layout):
        row = []
        for cell in cells:
            if not isinstance(cell, (list, tuple)) or len(cell) != 2:
                raise Wrong(f"{label}: step {s} holds {cell!r}; each entry is one tuple (k, t)")
            row.append((int(cell[0]), int(cell[1])))
        cleaned.append(row)
    return cleaned


def steps_of(pattern, T: int) -> dict:
    """{(k, t): s} from the layout; Wrong unless every token of K codebooks × T frames sits exactly once."""
    K, label = pattern.n_q, f"K={pattern.n_q}, T={T}"
    steps = {}
    for s, cells in enumerate(layout_of(pattern, T)):
        for k, t in cells:
            if not (0 <= k < K and 0 <= t < T):
                raise Wrong(f"{label}: step {s} holds ({k}, {t}), not a token: k < K = {K}, t < T = {T}, codebook first")
            if (k, t) in steps:
                raise Wrong(f"{label}: token (k={k}, t={t}) is placed twice, at steps {steps[(k, t)]} and {s}; "
                            "every token sits in exactly one step")
            steps[(k, t)] = s
    for k in range(K):
        for t in range(T):
            if (k, t) not in steps:
                raise Wrong(f"{label}: token (k={k}, t={t}) is never placed; P must cover all of Ω, every (k, t) "
                            "in exactly one step")
    return steps


def check_start_step():
    """Step 0 is the empty start step P_0 = ∅, for K = 1..4 and T = 1..6."""
    for pattern in patterns():
        for T in FRAMES:
            layout = layout_of(pattern, T)
            if not layout:
                raise Wrong(f"K={pattern.n_q}, T={T}: layout returned no steps at all")
            if layout[0]:
                raise Wrong(f"K={pattern.n_q}, T={T}: step 0 holds {layout[0]}, but step 0 is the empty start step "
                            "P_0 = ∅ (its output predicts step 1): put every token at a step >= 1")


def check_every_token_once():
    """Every (k, t) is placed exactly once (P is a partition of Ω), for K = 1..4 and T = 1..6."""
    for pattern in patterns():
        for T in FRAMES:
            steps_of(pattern, T)


def check_one_token_per_codebook_and_step():
    """No step holds two tokens of one codebook: each step has one slot per codebook."""
    for pattern in patterns():
        for T in FRAMES:
            for s, cells in enumerate(layout_of(pattern, T)):
                rows = [k for k, _ in cells]
                for k in set(rows):
                    if rows.count(k) > 1:
                        frames = [t for kk, t in cells if kk == k]
                        raise Wrong(f"K={pattern.n_q}, T={T}: step {s} holds frames {frames} of codebook {k}; a step "
                                    "has one slot per codebook (the sequence is (B, K, S)), so put them on different steps")


def check_causal_order():
    """Within each codebook, frame t sits at an earlier step than frame t + 1."""
    for pattern in patterns():
        for T in FRAMES:
            steps = steps_of(pattern, T)
            for k in range(pattern.n_q):
                for t in range(T - 1):
                    if steps[(k, t)] >= steps[(k, t + 1)]:
                        raise Wrong(f"K={pattern.n_q}, T={T}: codebook {k}'s frame {t} is at step {steps[(k, t)]}, "
                                    f"frame {t + 1} at step {steps[(k, t + 1)]}: frames out of order, each codebook's "
                                    "frames must come in increasing step order (causal generation)")


def check_num_steps():
    """num_steps(T) == len(layout(T)), S = a·T + b for T = 0..6, and the last step holds a token."""
    for pattern in patterns():
        K = pattern.n_q
        counts = [pattern.num_steps(T) for T in range(7)]
        for T in FRAMES:
            layout = layout_of(pattern, T)
            if counts[T] != len(layout):
                raise Wrong(f"K={K}: num_steps({T}) = {counts[T]} but layout({T}) has {len(layout)} steps; they must "
                            "agree (the LM allocates num_steps(T) steps)")
            if not layout[-1]:
                raise Wrong(f"K={K}, T={T}: the last step ({len(layout) - 1}) holds no token: a trailing empty step is "
                            "a forward pass that predicts nothing; is num_steps one (or more) too large?")
        a, b = counts[1] - counts[0], counts[0]
        if a < 1 or any(counts[T] != a * T + b for T in range(7)):
            raise Wrong(f"K={K}: num_steps(T) for T = 0..6 is {counts}, not a·T + b; Pattern.num_frames inverts S "
                        "= a·T + b from num_steps(0) and num_steps(1), so S must grow by the same a steps per frame")


def build(pattern, codes, special):
    """The check's own build: codes (B, K, T) -> sequence (B, K, S), special in the empty cells."""
    B, K, T = len(codes), len(codes[0]), len(codes[0][0])
    layout = layout_of(pattern, T)
    sequence = [[[special] * len(layout) for _ in range(K)] for _ in range(B)]
    for s, cells in enumerate(layout):
        for k, t in cells:
            for b in range(B):
                sequence[b][k][s] = codes[b][k][t]
    return sequence


def revert(pattern, sequence):
    """The check's own revert: T is found from S with num_steps alone, then each token read at its step."""
    S = len(sequence[0][0])
    frames = [T for T in range(S + 1) if pattern.num_steps(T) == S]
    if len(frames) != 1:
        raise Wrong(f"K={pattern.n_q}: {len(frames)} values of T give S = {S} steps ({frames}); revert must find T "
                    "from S alone, so num_steps must give each T its own S")
    T = frames[0]
    codes = [[[None] * T for _ in range(pattern.n_q)] for _ in sequence]
    for s, cells in enumerate(layout_of(pattern, T)):
        for k, t in cells:
            for b in range(len(sequence)):
                codes[b][k][t] = sequence[b][k][s]
    return codes


def check_build_revert():
    """Codes laid out by the layout and read back: revert(build(codes)) == codes, T = 1..6, K = 1..4."""
    for pattern in patterns():
        K = pattern.n_q
        for T in FRAMES:
            codes = [[[100 * b + 10 * k + t for t in range(T)] for k in range(K)] for b in range(2)]
            sequence = build(pattern, codes, special=-1)
            real = sum(cell != -1 for row in sequence[0] for cell in row)
            if real != K * T:
                raise Wrong(f"K={K}, T={T}: the built sequence holds {real} real tokens, expected K·T = {K * T}")
            back = revert(pattern, sequence)
            if back != codes:
                raise Wrong(f"K={K}, T={T}: reading the built sequence back does not give the codes")


def known_steps(name: str, K: int, T: int) -> dict:
    """{(k, t): s} of Table 3's six patterns (Figure 1), written here as formulas."""
    rule = {
        "parallel": lambda k, t: 1 + t,
        "delay": lambda k, t: 1 + t + k,
        "partial-delay": lambda k, t: 1 + t + (k > 0),
        "flatten": lambda k, t: 1 + t * K + k,
        "partial-flatten": lambda k, t: 1 + 2 * t + (k > 0),
        "vall-e": lambda k, t: 1 + t if k == 0 else 1 + T + t,
    }[name]
    return {(k, t): rule(k, t) for k in range(K) for t in range(T)}


def order(steps: dict) -> list:
    """The steps as an ordered list of token sets, empty steps left out: two layouts that differ only by
    empty steps predict the same tokens together in the same order, so they are the same pattern."""
    return [set(cell for cell, s in steps.items() if s == step) for step in sorted(set(steps.values()))]


def check_a_new_pattern():
    """For K=4, the layout differs from all six of Table 3 (parallel, delay, partial-delay, flatten, partial-flatten, vall-e)."""
    pattern = patterns()[-1]
    K = pattern.n_q
    mine = {T: order(steps_of(pattern, T)) for T in FRAMES}
    for name in ("parallel", "delay", "partial-delay", "flatten", "partial-flatten", "vall-e"):
        if all(mine[T] == order(known_steps(name, K, T)) for T in FRAMES):
            raise Wrong(f"for K=4 and every T = 1..6 your layout is the same pattern as '{name}' (Figure 1): the same "
                        "tokens predicted together, in the same order; design one of your own, e.g. delay by two "
                        "(token (k, t) at step 1 + t + 2k)")
