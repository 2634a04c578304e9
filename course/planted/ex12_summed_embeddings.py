from course.grading import Mistake

SUM = "return sum(table(sequence[:, k]) for k, table in enumerate(self.embeddings))"

MISTAKES = [
    Mistake("mean instead of sum", "lm.py", SUM,
            "return sum(table(sequence[:, k]) for k, table in enumerate(self.embeddings)) / len(self.embeddings)",
            says="averaged"),
    Mistake("codebook 1 only", "lm.py", SUM, "return self.embeddings[0](sequence[:, 0])", says="only codebook 1"),
    Mistake("no upper bound", "lm.py", "if low < 0 or high > self.special:", "if low < 0:", says="ValueError"),
    Mistake("the special token refused", "lm.py", "if low < 0 or high > self.special:",
            "if low < 0 or high >= self.special:", says="special token"),
]
