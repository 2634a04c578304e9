from course.grading import Mistake

MISTAKES = [
    Mistake("temperature multiplies the logits", "musicgen.py", "logits = logits.float() / temperature",
            "logits = logits.float() * temperature", says="does not multiply"),
    Mistake("top-k keeps k + 1 tokens", "musicgen.py",
            "kth = logits.kthvalue(card - top_k + 1, dim=-1, keepdim=True).values",
            "kth = logits.kthvalue(card - top_k, dim=-1, keepdim=True).values", says="outside the top 3"),
    Mistake("top-p mass includes the token itself", "musicgen.py",
            "outside = sorted_probs.cumsum(-1) - sorted_probs > top_p",
            "outside = sorted_probs.cumsum(-1) > top_p", says="own mass"),
    Mistake("the global generator", "musicgen.py",
            "uniform = torch.rand(B, K, 1, generator=generator, device=logits.device)",
            "uniform = torch.rand(B, K, 1, device=logits.device)", says="not from torch's global generator"),
]
