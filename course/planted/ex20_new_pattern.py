from course.grading import Mistake

PROJECT = "course/projects/my_pattern.py"

SOLUTION = '''"""Project 20: a codebook interleaving pattern of my own (paper §2.2, Figure 1): delay by two.

`python -m course.projects.my_pattern` draws the layout as a grid, like Figure 1.
"""
from patterns import Pattern


class MyPattern(Pattern):
    """Delay by two: codebook k is shifted right by 2k steps, token (k, t) at step 1 + t + 2k.

    S = 1 + T + 2(K - 1). Between two codebooks of a frame the model sees two more steps of the coarser
    one (a frame of look-ahead), at the price of K - 1 more steps than the delay pattern.
    """

    name = "my-pattern"

    def num_steps(self, T: int) -> int:
        """S, the number of sequence steps for T frames, the start step included."""
        return 1 + T + 2 * (self.n_q - 1)

    def layout(self, T: int) -> list:
        """For each step s = 0..S-1, the list of (k, t) it holds; step 0 empty."""
        layout = [[] for _ in range(self.num_steps(T))]
        for t in range(T):
            for k in range(self.n_q):
                layout[1 + t + 2 * k].append((k, t))
        return layout


if __name__ == "__main__":
    print(MyPattern(4).grid(3))
'''

MISTAKES = [
    Mistake("no start step", PROJECT, "layout[1 + t + 2 * k].append((k, t))", "layout[t + 2 * k].append((k, t))",
            says="empty start step"),
    Mistake("the last frame left out", PROJECT, "for t in range(T):", "for t in range(T - 1):", says="never placed"),
    Mistake("delay by one: the delay pattern again", PROJECT, "layout[1 + t + 2 * k].append((k, t))",
            "layout[1 + t + k].append((k, t))", says="same pattern as 'delay'"),
    Mistake("num_steps two too many", PROJECT, "return 1 + T + 2 * (self.n_q - 1)", "return 1 + T + 2 * self.n_q",
            says="holds no token"),
]
