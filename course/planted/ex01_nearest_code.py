from course.grading import Mistake

MISTAKES = [
    Mistake("farthest entry", "rvq.py", "return distances.argmin(dim=1)", "return distances.argmax(dim=1)",
            says="farthest"),
    Mistake("no ||e||² term", "rvq.py", "- 2 * x @ self.codebook.t()\n                     + self.codebook.pow(2).sum(1)[None])",
            "- 2 * x @ self.codebook.t())", says="||e||²"),
    Mistake("float indices", "rvq.py", "return distances.argmin(dim=1)", "return distances.argmin(dim=1).float()",
            says="int64"),
]
