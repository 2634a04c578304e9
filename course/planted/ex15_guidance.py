from course.grading import Mistake

MISTAKES = [
    Mistake("cond and null swapped", "musicgen.py", "return null + cfg_coef * (cond - null)",
            "return cond + cfg_coef * (null - cond)", says="swapped"),
    Mistake("starts from the conditional logits", "musicgen.py", "return null + cfg_coef * (cond - null)",
            "return cond + cfg_coef * (cond - null)", says="start from"),
    Mistake("γ times the conditional logits", "musicgen.py", "return null + cfg_coef * (cond - null)",
            "return null + cfg_coef * cond", says="slope"),
]
