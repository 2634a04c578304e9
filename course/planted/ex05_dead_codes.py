from course.grading import Mistake

MISTAKES = [
    # The bug of audiocraft's and vector-quantize-pytorch's expire_codes_ (revive_dead_codes' docstring).
    Mistake("only the codebook overwritten", "rvq.py",
            "        self.cluster_size[dead] = self.dead_threshold\n"
            "        self.embed_sum[dead] = x[picks] * self.dead_threshold\n",
            "", says="only overwrote the codebook"),
    Mistake("live entries revived", "rvq.py", "dead = self.cluster_size < self.dead_threshold",
            "dead = self.cluster_size > self.dead_threshold", says="live entry"),
    Mistake("sum not scaled by the count", "rvq.py", "self.embed_sum[dead] = x[picks] * self.dead_threshold",
            "self.embed_sum[dead] = x[picks]", says="embed_sum / cluster_size"),
]
