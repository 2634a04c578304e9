from course.grading import Mistake

MISTAKES = [
    Mistake("no start step", "patterns.py", "layout[1 + t + delay].append((k, t))",
            "layout[t + delay].append((k, t))", says="start step"),
    Mistake("delay by the codebook's index", "patterns.py", "layout[1 + t + delay].append((k, t))",
            "layout[1 + t + k].append((k, t))", says="self.delays[k]"),
    Mistake("tuples (t, k)", "patterns.py", "layout[1 + t + delay].append((k, t))",
            "layout[1 + t + delay].append((t, k))", says="(t, k)"),
]
