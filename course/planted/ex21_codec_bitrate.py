from course.grading import Mistake

FILE = "course/projects/codec_bitrate.py"
SOLUTION = '''"""Project 21: a codec with another number of codebooks, and its bitrate (python -m course check 21)."""
import math
from dataclasses import replace

from encodec import EncodecConfig
from train import TINY_CODEC


def my_codec_config() -> EncodecConfig:
    """The tiny recipe's codec (TINY_CODEC) with another number of codebooks n_q than its 4."""
    return replace(TINY_CODEC, n_q=8)


def bitrate_kbps(cfg: EncodecConfig) -> float:
    """Kilobits per second of the codes of a codec with config `cfg`."""
    return cfg.n_q * math.log2(cfg.codebook_size) * cfg.frame_rate / 1000
'''

MISTAKES = [
    Mistake("still four codebooks", FILE, "n_q=8)", "n_q=4)", says="still 4"),
    Mistake("natural log", FILE, "math.log2(cfg.codebook_size)", "math.log(cfg.codebook_size)", says="log2"),
    Mistake("bits per second", FILE, "* cfg.frame_rate / 1000", "* cfg.frame_rate", says="kbps"),
    Mistake("one codebook's bits", FILE, "return cfg.n_q * math.log2", "return math.log2", says="n_q · log2(V)"),
]
