from course.grading import Mistake

MISTAKES = [
    Mistake("summed over codebooks", "lm.py", "return torch.stack(objective).mean(), torch.stack(per_codebook)",
            "return torch.stack(objective).sum(), torch.stack(per_codebook)", says="summed over codebooks"),
    Mistake("start_weight ignored", "lm.py", "frame_weight[:self.cfg.start_frames] = self.cfg.start_weight",
            "frame_weight[:self.cfg.start_frames] = 1.0", says="start_weight"),
    Mistake("divided by the count", "lm.py", "objective.append((ce * weight).sum() / weight.sum())",
            "objective.append((ce * weight).mean())", says="sum of the weights"),
    Mistake("weighted per_codebook", "lm.py", "per_codebook.append(ce.mean().detach())",
            "per_codebook.append(((ce * weight).sum() / weight.sum()).detach())", says="unweighted"),
]
