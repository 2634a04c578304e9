from course.grading import Mistake

MISTAKES = [
    Mistake("decay swapped", "rvq.py", "self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)",
            "self.cluster_size.mul_(1 - self.decay).add_(counts, alpha=self.decay)", says="the decay is swapped"),
    Mistake("sums not averaged", "rvq.py", "self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)",
            "self.embed_sum.copy_(sums)", says="the sums are an EMA too"),
    Mistake("no Laplace smoothing", "rvq.py",
            "smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total",
            "smoothed = self.cluster_size", says="NaN or inf"),
    Mistake("smoothing not renormalised", "rvq.py",
            "smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total",
            "smoothed = self.cluster_size + self.epsilon", says="renormalised"),
]
