from course.grading import Mistake

MISTAKES = [
    Mistake("sin half first", "transformer.py", "return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)",
            "return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)", says="sin half comes first"),
    Mistake("Vaswani's exponent i / (D/2)", "transformer.py", "-(math.log(max_period) / (half - 1))",
            "-(math.log(max_period) / half)", says="D/2 - 1"),
    Mistake("interleaved cos and sin", "transformer.py",
            "return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)",
            "return torch.stack([torch.cos(phase), torch.sin(phase)], dim=-1).flatten(-2)", says="interleaved"),
]
