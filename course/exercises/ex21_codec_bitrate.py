"""Project 21 (§2.1, open): a codec with another number of codebooks, and its bitrate.

The number of codebooks K sets what the codes cost: every frame sends K indices of log2(V) bits
(V = codebook_size), at frame_rate = sample_rate / hop frames per second,

    bitrate = K · log2(V) · frame_rate          (the paper's codec: 4 · 11 · 50 = 2.2 kbps)

and each added level quantizes what the previous levels left, so more codebooks reconstruct better.
Write course/projects/codec_bitrate.py (`python -m course start 21` creates it): `my_codec_config()`,
the tiny recipe's codec with another K of your choice, and `bitrate_kbps(cfg)`, the formula above in
kbps. Then train it and listen: `python train.py --stage codec --codec.n_q=K --out runs/codec-K`,
and compare the held-out mel distance per number of codebooks the stage prints with the tiny run's.
The checks grade properties (your K is not 4, your formula on codecs you did not choose, the levels
of a codec with your K), not equality to an answer.
"""
import math
from dataclasses import replace

import torch

import rvq
from course.grading import Exercise, Wrong, load_project
from encodec import EncodecConfig, EncodecModel

TEMPLATE = '''"""Project 21: a codec with another number of codebooks, and its bitrate (python -m course check 21)."""
from dataclasses import replace

from encodec import EncodecConfig
from train import TINY_CODEC


def my_codec_config() -> EncodecConfig:
    """The tiny recipe's codec (TINY_CODEC) with another number of codebooks n_q than its 4."""
    raise NotImplementedError("project 21: return replace(TINY_CODEC, ...) with your n_q")


def bitrate_kbps(cfg: EncodecConfig) -> float:
    """Kilobits per second of the codes of a codec with config `cfg` (cfg.n_q, cfg.codebook_size,
    cfg.frame_rate)."""
    raise NotImplementedError("project 21: n_q indices of log2(codebook_size) bits per frame, frame_rate frames a second")
'''

EXERCISE = Exercise(
    number=21, title="A codec with another number of codebooks, and its bitrate",
    section="§2.1", project="course/projects/codec_bitrate.py", template=TEMPLATE,
    hints=["my_codec_config: replace(TINY_CODEC, n_q=8), or 2, or any K ≥ 1 but 4.",
           "bitrate_kbps: cfg.n_q * math.log2(cfg.codebook_size) * cfg.frame_rate / 1000 (frame_rate is "
           "sample_rate / hop_length, a property of the config)."],
)


def chosen():
    project = load_project(EXERCISE)
    return project, project.my_codec_config()


def check_another_number_of_codebooks():
    """my_codec_config() is an EncodecConfig with n_q ≥ 1 other than the tiny recipe's 4."""
    _, cfg = chosen()
    if not isinstance(cfg, EncodecConfig):
        raise Wrong(f"my_codec_config() must return an EncodecConfig (replace(TINY_CODEC, n_q=...)), got {type(cfg).__name__}")
    if cfg.n_q == 4:
        raise Wrong("n_q is still 4: choose another number of codebooks (e.g. 2 or 8)")
    if cfg.n_q < 1:
        raise Wrong(f"n_q must be at least 1, got {cfg.n_q}")


def check_the_bitrate_formula_on_codecs_you_did_not_choose():
    """bitrate_kbps: the paper's codec 2.2 kbps, the tiny one 1.6, and others, by hand."""
    project, _ = chosen()
    cases = [(EncodecConfig(), 4 * 11 * 50 / 1000),                           # the paper's: 2.2 kbps
             (replace(EncodecConfig(), sample_rate=16000, ratios=(8, 5, 4, 2), codebook_size=256), 4 * 8 * 50 / 1000),
             (replace(EncodecConfig(), n_q=8, codebook_size=1024), 8 * 10 * 50 / 1000),
             (replace(EncodecConfig(), n_q=1, sample_rate=24000, ratios=(8, 5, 4, 2)), 1 * 11 * 75 / 1000)]
    for cfg, expected in cases:
        got = project.bitrate_kbps(cfg)
        if abs(got - expected) > 1e-9:
            what = f"K={cfg.n_q}, V={cfg.codebook_size}, {cfg.frame_rate:g} frames/s"
            if abs(got - expected * math.log(cfg.codebook_size) / math.log2(cfg.codebook_size)) < 1e-9:
                raise Wrong(f"{what}: got {got:.4f} kbps, expected {expected:.4f}: bits are log2(V), not the natural log")
            if abs(got * 1000 - expected * 1000 * 1000) < 1e-6:
                raise Wrong(f"{what}: got {got:.4f}: that is bits per second; the function returns kbps")
            raise Wrong(f"{what}: got {got:.4f} kbps, expected {expected:.4f} = n_q · log2(V) · frame_rate / 1000")


def check_your_codec_has_your_number_of_levels_and_bitrate():
    """The codec built from your config quantizes with n_q levels and sends your bitrate."""
    project, cfg = chosen()
    codec = EncodecModel(cfg)
    levels = len(codec.quantizer.layers)
    if levels != cfg.n_q:
        raise Wrong(f"the codec has {levels} RVQ levels, your config says n_q = {cfg.n_q}")
    if abs(project.bitrate_kbps(cfg) - codec.bitrate / 1000) > 1e-9:
        raise Wrong(f"your bitrate {project.bitrate_kbps(cfg):.4f} kbps differs from the codec's own {codec.bitrate / 1000:.4f}")


def check_every_added_level_reconstructs_better():
    """With your K, the RVQ's error (k-means codebooks on latents) falls with every level up to K."""
    _, cfg = chosen()
    codec = EncodecModel(replace(cfg, codebook_size=min(cfg.codebook_size, 64)))
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4, cfg.dimension, 200, generator=generator)  # latents (B, D, T)
    nearest = lambda vq, x: torch.cdist(x, vq.codebook).argmin(dim=1)  # the check's own assignment
    saved = rvq.VectorQuantizer.assign
    rvq.VectorQuantizer.assign = nearest
    try:
        codec.quantizer.init_codebooks(z)
    finally:
        rvq.VectorQuantizer.assign = saved
    residual, errors = z.transpose(1, 2).reshape(-1, cfg.dimension), []
    for layer in codec.quantizer.layers:
        residual = residual - layer.codebook[nearest(layer, residual)]
        errors.append(float(residual.pow(2).mean()))
    if any(b >= a for a, b in zip(errors, errors[1:])):
        raise Wrong(f"the error per level {[round(e, 3) for e in errors]} does not fall with every level")
