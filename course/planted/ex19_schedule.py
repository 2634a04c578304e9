from course.grading import Mistake

MISTAKES = [
    Mistake("warm-up starts at zero", "stages.py", "return lr * (step + 1) / warmup", "return lr * step / warmup",
            says="(step + 1)"),
    Mistake("decay to zero", "stages.py", "return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))",
            "return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))", says="not to zero"),
    Mistake("progress not clamped", "stages.py", "math.cos(math.pi * min(1.0, progress))",
            "math.cos(math.pi * progress)", says="clamped"),
    Mistake("progress counted from step 0", "stages.py", "progress = (step - warmup) / max(1, max_steps - warmup)",
            "progress = step / max(1, max_steps)", says="starts at the end of the warm-up"),
]
