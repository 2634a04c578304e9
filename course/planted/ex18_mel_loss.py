from course.grading import Mistake

MISTAKES = [
    Mistake("no log term", "losses.py", "return (s - s_hat).abs().mean() + (torch.log(s + 1e-5) - torch.log(s_hat + 1e-5)).abs().mean()",
            "return (s - s_hat).abs().mean()", says="log term"),
    Mistake("log of zero", "losses.py", "(torch.log(s + 1e-5) - torch.log(s_hat + 1e-5))", "(torch.log(s) - torch.log(s_hat))",
            says="log 0"),
    Mistake("summed scales", "losses.py", "        return loss / len(self.scales)\n", "        return loss\n",
            says="average over the scales"),
]
