from course.grading import Mistake

MISTAKES = [
    Mistake("residual never subtracted", "rvq.py", "            residual = residual - layer.decode(layer_codes)\n",
            "", says="codebook 2 differs"),
    Mistake("residual taken from z", "rvq.py", "            residual = residual - layer.decode(layer_codes)\n",
            "            residual = z - layer.decode(layer_codes)\n", says="codebook 3 differs"),
    Mistake("decode averages the levels", "rvq.py",
            "return sum(layer.decode(codes[:, i]) for i, layer in enumerate(self.layers[:k]))",
            "return sum(layer.decode(codes[:, i]) for i, layer in enumerate(self.layers[:k])) / k",
            says="not averaged"),
    Mistake("encode ignores n_q", "rvq.py", "for layer in self.layers[:n_q or self.n_q]:\n            B, D, T",
            "for layer in self.layers:\n            B, D, T", says="first 2 codebooks"),
]
