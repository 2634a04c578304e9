"""train.py's config overrides, nanoGPT-style: every field of LMConfig (--lm.F=V), EncodecConfig
(--codec.F=V) and Preset (--F=V) is reachable, values are parsed by the field's type, and a bad option
is refused in one line with exit code 2 before any work."""
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import train
from encodec import EncodecConfig
from lm import LMConfig

ROOT = Path(__file__).resolve().parents[1]


def as_text(value) -> str:
    """How a user writes `value` on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def every_field():
    for prefix, cls, current in (("lm.", LMConfig, train.TINY.lm), ("codec.", EncodecConfig, train.TINY.codec),
                                 ("", train.Preset, train.TINY)):
        for f in fields(cls):
            if f.name in ("lm", "codec") or (prefix == "lm." and f.name in train.FROM_THE_CODEC):
                continue
            yield prefix, f.name, getattr(current, f.name)


@pytest.mark.parametrize("prefix, name, value", list(every_field()), ids=lambda x: str(x))
def test_every_field_is_reachable_and_its_value_round_trips(prefix, name, value):
    preset = train.apply_overrides(train.TINY, [f"--{prefix}{name}={as_text(value)}"])
    target = {"lm.": preset.lm, "codec.": preset.codec, "": preset}[prefix]
    assert getattr(target, name) == value and type(getattr(target, name)) is type(value)
    assert preset == train.TINY  # the same value: nothing else moved


def test_overrides_change_what_they_name_and_only_that():
    preset = train.apply_overrides(train.TINY, ["--lm.dim=256", "--codec.n_q=8", "--lm_steps=500",
                                                "--codec.ratios=8,5,4,4", "--lm.input_codebooks=none",
                                                "--codec.snake=false", "--lm_lr=3e-4"])
    assert (preset.lm.dim, preset.codec.n_q, preset.lm_steps, preset.codec.ratios) == (256, 8, 500, (8, 5, 4, 4))
    assert preset.lm.input_codebooks is None and preset.codec.snake is False and preset.lm_lr == 3e-4
    assert preset.lm.n_layers == train.TINY.lm.n_layers and preset.codec_steps == train.TINY.codec_steps


@pytest.mark.parametrize("option, words", [
    ("--lm.dimm=3", "LMConfig has no field 'dimm'"),
    ("--lm.dim=2.5", "LMConfig.dim takes an int"),
    ("--codec.snake=maybe", "takes true or false"),
    ("--lm.input_codebooks=x", "takes an int or none"),
    ("--lm_steps", "unrecognized argument"),
    ("--lm.n_q=8", "set --codec.n_q"),
])
def test_a_bad_option_is_one_line_and_exit_code_2_before_any_work(option, words, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(tmp_path / "run"),
                             "--data", str(tmp_path / "no_data"), option], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
