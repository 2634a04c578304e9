from course.grading import Mistake

MISTAKES = [
    Mistake("no shift", "patterns.py", "source = self.step_of(T, logits.device) - 1",
            "source = self.step_of(T, logits.device)", says="the token's own step"),
    Mistake("valid drops step 0's output", "patterns.py", "valid = source >= 0", "valid = source > 0",
            says="s - 1 >= 0"),
    Mistake("codebook 1's steps for every codebook", "patterns.py",
            "index = source.clamp(min=0)[None, :, :, None].expand(B, K, T, card)",
            "index = source[:1].clamp(min=0)[None, :, :, None].expand(B, K, T, card)",
            says="own step_of[k, t]"),
]
