from course.grading import Mistake

MISTAKES = [
    Mistake("zeros in the empty cells", "patterns.py",
            "sequence = codes.new_full((B, K, self.num_steps(T)), special)",
            "sequence = codes.new_zeros((B, K, self.num_steps(T)))", says="special token"),
    Mistake("mask of the special cells", "patterns.py",
            "mask = torch.zeros(K, self.num_steps(T), dtype=torch.bool, device=codes.device)\n"
            "        mask.scatter_(1, step, True)",
            "mask = torch.ones(K, self.num_steps(T), dtype=torch.bool, device=codes.device)\n"
            "        mask.scatter_(1, step, False)", says="mask is True on the special cells"),
    Mistake("revert reads one step early", "patterns.py",
            "return sequence.gather(2, self.step_of(T, sequence.device).expand(B, K, T))",
            "return sequence.gather(2, (self.step_of(T, sequence.device) - 1).expand(B, K, T))",
            says="one step early"),
]
