from course.grading import Mistake

MISTAKES = [
    Mistake("filter bank over time", "conditioners.py", 'torch.einsum("cf,bft->btc", self.filterbank.to(mono.device), spec)',
            'torch.einsum("cf,bft->btc", self.filterbank.to(mono.device), spec.flip(1))', says="filter bank"),
    Mistake("first channel only", "conditioners.py", "mono = wav.float().mean(dim=1)", "mono = wav.float()[:, 0]",
            says="average the channels"),
    Mistake("no silence gate", "conditioners.py", "        if self.gate_silence:\n            chroma = chroma.masked_fill(peak < self.silence, 0.0)\n",
            "", says="rest"),
    Mistake("not max-normalised", "conditioners.py", "chroma = chroma / peak.clamp(min=1e-6)", "chroma = chroma / chroma.sum(-1, keepdim=True).clamp(min=1e-6)",
            says="maximum"),
]
