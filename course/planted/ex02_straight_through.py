from course.grading import Mistake

MISTAKES = [
    Mistake("straight-through without detach", "rvq.py", "quantized = x + (quantized - x).detach()",
            "quantized = x + (quantized - x)", says="zero gradient"),
    Mistake("commitment on the detached input", "rvq.py", "commitment = F.mse_loss(x, quantized.detach())",
            "commitment = F.mse_loss(x.detach(), quantized)", says="commitment loss gives the encoder no gradient"),
    Mistake("rows put back as (B, D, T) directly", "rvq.py",
            "quantized = self.codebook[indices].view(B, T, D).transpose(1, 2)",
            "quantized = self.codebook[indices].view(B, D, T)", says="not .view(B, D, T)"),
    Mistake("revival before the EMA update", "rvq.py",
            "            self.ema_update(flat, indices)\n            self.revive_dead_codes(flat)\n",
            "            self.revive_dead_codes(flat)\n            self.ema_update(flat, indices)\n",
            says="must run after ema_update"),
]
