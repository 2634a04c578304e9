from course.grading import Mistake

MISTAKES = [
    Mistake("no 1/√d scale", "transformer.py", "scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
            "scores = q @ k.transpose(-2, -1)", says="not divided by √d_k"),
    Mistake("1/d instead of 1/√d", "transformer.py", "scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
            "scores = q @ k.transpose(-2, -1) / q.shape[-1]", says="1/d scale"),
    Mistake("mask inverted", "transformer.py", 'scores = scores.masked_fill(~mask, float("-inf"))',
            'scores = scores.masked_fill(mask, float("-inf"))', says="True = may attend"),
    Mistake("softmax over the queries", "transformer.py", "return scores.softmax(dim=-1) @ v",
            "return scores.softmax(dim=-2) @ v", says="over the keys"),
]
