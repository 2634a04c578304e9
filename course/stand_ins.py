"""Short reference forms that several exercises' checks use in place of other exercises' functions, so
that blanking one exercise never breaks another's checks (`python -m course selfcheck`, step 4)."""
import torch
import torch.nn as nn

from patterns import Pattern


class HandDelay(Pattern):
    """The delay pattern, its layout written here (DelayPattern.layout is exercise 6): (k, t) at 1 + t + k."""

    name = "delay (the check's own)"

    def layout(self, T: int) -> list:
        layout = [[] for _ in range(T + self.n_q)]
        for t in range(T):
            for k in range(self.n_q):
                layout[1 + t + k].append((k, t))
        return layout


class StandInChroma(nn.Module):
    """Stands in for conditioners.ChromaExtractor while an LM is built (its forward is exercise 17)."""

    def __init__(self, sample_rate, n_fft=None, hop_length=None, **kwargs):
        super().__init__()
        self.frame_rate = sample_rate / (hop_length or 1)

    def forward(self, wav):
        return torch.zeros(wav.shape[0], 1, 12)  # (B, F=1, 12)
