"""Exercise 6 (§2.2, Figure 1): the delay patterns' layout.

A pattern says which tokens the LM predicts together at each sequence step: P = (P_0, P_1, ..., P_S),
a partition of Ω = {(k, t)} with P_0 = ∅, the empty *start step* (its output predicts step 1). The
delay patterns shift codebook k right by delays[k] steps: token (k, t) sits at step

    s(k, t) = 1 + t + delays[k],          S = 1 + T + max(delays) steps (start step included).

The paper's default, "delay", has delays (0, 1, 2, 3); for K = 4, T = 3 (Figure 1):

            s0 s1 s2 s3 s4 s5 s6
        k1  .  t0 t1 t2 .  .  .
        k2  .  .  t0 t1 t2 .  .
        k3  .  .  .  t0 t1 t2 .
        k4  .  .  .  .  t0 t1 t2

"parallel" is delays (0, 0, 0, 0) and "partial-delay" (0, 1, 1, 1). Write `DelayPattern.layout` in
patterns.py: it returns a list of S lists, list s holding the (k, t) of step s (codebook k first, both
0-based); `self.num_steps(T)` already gives S. Everything else (build, revert, the logits' shift) is
derived from this list.
"""
from patterns import DelayPattern, make_pattern
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=6, title="The delay pattern's layout", section="§2.2",
    blanks=[("patterns.py", "DelayPattern.layout")],
    hints=["Start from `layout = [[] for _ in range(self.num_steps(T))]`: one empty list per step, step 0 "
           "included, then append every (k, t) to the list of its step.",
           "Two loops, over frames t and codebooks k; self.delays[k] is codebook k's delay. Token (k, t) goes "
           "to step 1 + t + self.delays[k]: the 1 is the start step s0, which stays empty.",
           "Append the tuple (k, t), codebook first: the rest of patterns.py reads `for k, t in cells`."],
)

# Figure 1 by hand, K=4, T=3: row kN = codebook N (k = N - 1), column sS = sequence step, tN = frame N.
FIGURE_1 = {
    "parallel": """
            s0 s1 s2 s3
        k1  .  t0 t1 t2
        k2  .  t0 t1 t2
        k3  .  t0 t1 t2
        k4  .  t0 t1 t2""",
    "delay": """
            s0 s1 s2 s3 s4 s5 s6
        k1  .  t0 t1 t2 .  .  .
        k2  .  .  t0 t1 t2 .  .
        k3  .  .  .  t0 t1 t2 .
        k4  .  .  .  .  t0 t1 t2""",
    "partial-delay": """
            s0 s1 s2 s3 s4
        k1  .  t0 t1 t2 .
        k2  .  .  t0 t1 t2
        k3  .  .  t0 t1 t2
        k4  .  .  t0 t1 t2""",
}


def read_grid(text: str):
    """A grid as written above -> ({(k, t): s}, S)."""
    header, *rows = text.strip().splitlines()
    n_steps = len(header.split())
    steps = {}
    for k, row in enumerate(rows):
        for s, cell in enumerate(row.split()[1:]):
            if cell != ".":
                steps[(k, int(cell[1:]))] = s
    return steps, n_steps


def placed(layout, K: int, T: int, what: str) -> dict:
    """The student's layout -> {(k, t): s}, checking it is a list of steps holding each (k, t) once."""
    if not isinstance(layout, (list, tuple)) or not all(isinstance(cells, (list, tuple)) for cells in layout):
        raise Wrong(f"{what}: layout must return a list of steps, each a list of (k, t) tuples; got {type(layout).__name__}")
    steps = {}
    for s, cells in enumerate(layout):
        for cell in cells:
            if len(cell) != 2:
                raise Wrong(f"{what}: step {s} holds {cell!r}; each entry is one tuple (k, t)")
            k, t = int(cell[0]), int(cell[1])
            if not (0 <= k < K and 0 <= t < T):
                if 0 <= t < K and 0 <= k < T:
                    raise Wrong(f"{what}: step {s} holds ({k}, {t}), not a token of K={K} codebooks and T={T} "
                                "frames: are the tuples written (t, k) instead of (k, t), codebook first?")
                raise Wrong(f"{what}: step {s} holds ({k}, {t}), outside k < K={K}, t < T={T}")
            if (k, t) in steps:
                raise Wrong(f"{what}: token (k={k}, t={t}) is placed twice (steps {steps[(k, t)]} and {s})")
            steps[(k, t)] = s
    missing = [(k, t) for k in range(K) for t in range(T) if (k, t) not in steps]
    if missing:
        raise Wrong(f"{what}: token (k={missing[0][0]}, t={missing[0][1]}) is never placed; every (k, t) "
                    "belongs to exactly one step")
    return steps


def compare(name: str, pattern, T: int, expected: dict, n_steps: int):
    """The student's layout of `pattern` against the expected {(k, t): s} and S."""
    K = pattern.n_q
    what = f"{name} (delays {tuple(pattern.delays)}), T={T}"
    try:
        layout = pattern.layout(T)
    except IndexError as error:
        raise Wrong(f"{what}: layout indexed past its S = num_steps(T) = {n_steps} steps ({error}): token (k, t) "
                    "goes to step 1 + t + delays[k] < S; is the delay of codebook k read from self.delays[k]?") from None
    if not isinstance(layout, (list, tuple)):
        raise Wrong(f"{what}: layout must return a list of steps, got {type(layout).__name__}")
    if len(layout) and len(layout[0]):
        raise Wrong(f"{what}: step 0 holds {list(layout[0])}, but step 0 is the empty start step s0 (P_0 = ∅): "
                    "token (k, t) goes to step 1 + t + delays[k], not t + delays[k]")
    steps = placed(layout, K, T, what)
    if len(layout) != n_steps:
        raise Wrong(f"{what}: the layout has {len(layout)} steps, expected S = 1 + T + max(delays) = {n_steps} "
                    "(self.num_steps(T)), the start step included")
    for (k, t), s in sorted(expected.items()):
        if steps[(k, t)] != s:
            extra = ""
            if steps[(k, t)] == 1 + t + k:
                extra = (f": {steps[(k, t)]} = 1 + t + k; the delay of codebook k is self.delays[k] "
                         f"(= {pattern.delays[k]} here), not k")
            raise Wrong(f"{what}: token (k={k}, t={t}) is at step {steps[(k, t)]}, expected step {s} "
                        f"= 1 + t + delays[k]{extra}")


def check_delay_grid():
    """"delay", K=4, T=3: the layout is Figure 1's grid, start step s0 empty."""
    expected, n_steps = read_grid(FIGURE_1["delay"])
    compare("delay", make_pattern("delay", 4), 3, expected, n_steps)


def check_parallel_grid():
    """"parallel", K=4, T=3: all four tokens of a frame in one step, after the empty s0."""
    expected, n_steps = read_grid(FIGURE_1["parallel"])
    compare("parallel", make_pattern("parallel", 4), 3, expected, n_steps)


def check_partial_delay_grid():
    """"partial-delay", K=4, T=3: codebook 1 leads, codebooks 2-4 follow one step later."""
    expected, n_steps = read_grid(FIGURE_1["partial-delay"])
    compare("partial-delay", make_pattern("partial-delay", 4), 3, expected, n_steps)


def check_any_delays():
    """Unusual delays (2, 0, 3), (5,) and (1, 1): every token at 1 + t + delays[k], for T = 0..5."""
    for delays in ([2, 0, 3], [5], [1, 1]):
        pattern = DelayPattern(len(delays), delays, name="custom")
        for T in range(6):
            # By the definition: s(k, t) = 1 + t + delays[k], S = 1 + T + max(delays).
            expected = {(k, t): 1 + t + delays[k] for k in range(len(delays)) for t in range(T)}
            compare("custom", pattern, T, expected, 1 + T + max(delays))
