"""Train MusicGen from scratch on a laptop CPU: the codec (stage 1), then the LM on cached codes (stage 2).

Paper §4.1: MusicGen trains an EnCodec model first, freezes it, encodes the whole dataset once, and
trains one transformer LM on those discrete codes. This script does exactly that at toy scale, with
both stages in stages.py:

    python train.py                     # toy dataset → codec → cached codes → LM → samples/*.wav
    python train.py --stage lm --resume # continue the LM stage exactly where it stopped
    torchrun --nproc_per_node 2 train.py  # the same run on 2 processes (DDP, ddp.py): same batches

This file holds the recipe: `Preset` (the paper's budgets by default) and the tiny recipe that
changes them, one line per value with the paper's value and the reason; then the command line.
"""
import argparse
import json
import math
import os
import sys
import time
import types
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

import data
import ddp
import lora
import page
import toy
from audio import write_audio
from encodec import EncodecConfig, EncodecModel, read_checkpoint
from lm import LMConfig, LMModel, check_input_codebooks
from losses import ReconstructionLoss
from musicgen import MusicGen
from patterns import make_pattern
from published.finetune import FineTune
from published.pretrained import PretrainedError
from stages import lm_config_for, train_codec, train_lm


@dataclass
class Preset:
    """What one run trains: the two models' configs and the training budgets. The defaults are the
    paper's (EnCodec's for stage 1); TINY below is the laptop recipe."""
    codec: EncodecConfig = field(default_factory=EncodecConfig)
    codec_steps: int = 300_000           # EnCodec: 300 epochs of 2000 updates
    codec_batch: int = 64                # crops per step
    codec_crop_seconds: float = 1.0      # crop length
    codec_lr: float = 3e-4               # Adam, betas (0.5, 0.9)
    codec_quantizer_warmup: float = 0.0  # fraction of steps trained without the RVQ (then k-means init)
    codec_grad_clip: float = 0.0         # max gradient norm of a codec step (0 = none)
    lm: LMConfig = field(default_factory=LMConfig)
    lm_steps: int = 1_000_000
    lm_batch: int = 192                  # windows of lm.window_seconds (30 s)
    lm_lr: float = 1e-4                  # AdamW, betas (0.9, 0.95), weight decay 0.1
    lm_warmup: int = 4000                # linear warm-up steps, then cosine decay
    n_clips: int = 1000                  # toy clips built when data/toy is missing (paper: 20k hours)


# ==== the tiny recipe: every value it changes from the paper, and why (evidence: NOTES.md) ============
TINY_CODEC = replace(
    EncodecConfig(),
    sample_rate=16000,           # paper: 32000. Why: half the samples for the same music on a CPU.
    ratios=(8, 5, 4, 2),         # paper: (8, 5, 4, 4). Why: keeps the paper's 50 Hz at 16 kHz.
    n_filters=8,                 # paper: 64. Why: a model that trains in 3 CPU minutes.
    dimension=64,                # paper: 128. Why: the same.
    codebook_size=256,           # paper: 2048. Why: 1000 clips cannot fill 2048 codes.
    dead_threshold=0.1,          # paper: 2. Why: 192 vectors a batch for 256 codes, not 3200 for 2048.
    spectral=True,               # paper: False (SEANet). Why: a few-minute SEANet loses the melody.
    snake=True,                  # paper: False (ELU). Why: periodic activations help pitched audio.
    l1_weight=0.0,               # paper: 0.1. Why: the spectral decoder invents its own phase.
    mel_weight=1.0,              # paper: 2. Why: fixed weights, equal to the two pitch losses'.
    pitch_weight=1.0,            # paper: 0. Why: mel bands are too wide to tell a semitone apart.
    frequency_weight=1.0,        # paper: 0. Why: without it the notes drift by tens of cents.
    mel_scales=(64, 128, 256, 512, 1024, 2048),  # paper: from 32. Why: 8 mel bands at 32 are too coarse.
    adversarial=False,           # paper: True. Why: in CPU minutes the discriminator only costs steps.
)
TINY_LM = replace(
    LMConfig(),
    dim=128,                     # paper: 1024. Why: a model that trains in 5 CPU minutes.
    n_layers=4,                  # paper: 24. Why: the same.
    n_heads=4,                   # paper: 16. Why: head width 32.
    ffn_dim=512,                 # paper: 4096 (4·D). Why: 4·D kept.
    dropout=0.1,                 # paper: 0. Why: 1000 clips are few even for 1.6M parameters.
    window_seconds=4.0,          # paper: 30. Why: the toy clips are 4 s long.
    input_codebooks=1,           # paper: all K. Why: the noisy finer codebooks drowned the beat.
    text_encoder="scratch",      # paper: "t5", frozen and pretrained. Why: no download; learned with the LM.
    text_dim=128,                # paper: T5-base, 768. Why: trained from scratch on 1000 descriptions.
    text_layers=2,               # paper: 12. Why: the same.
    text_heads=4,                # paper: 12. Why: the same.
    cfg_dropout=0.1,             # paper: 0.3. Why: at 0.3 the tiny LM did not learn the tempo words.
    melody_dropout=0.1,          # paper: 0.2. Why: the tiny LM then leans on the melody more.
    start_weight=5.0,            # paper: 1. Why: the first frames teach the words the audio cannot.
    cfg_coef=2.0,                # paper: 3. Why: stronger guidance pushes the tiny LM off its data.
    trim_prompt_lookahead=True,  # paper: False. Why: look-ahead frames say "the note stops here".
    melody_fusion="sum",         # paper: "prepend". Why: prepended, the tiny LM missed the alignment.
    chroma_n_fft=8192,           # paper: 16384 at 32 kHz. Why: the paper's window length at 16 kHz.
    chroma_hop_length=2048,      # paper: 4096 at 32 kHz. Why: the same 7.8 frames per second at 16 kHz.
    chroma_gate_silence=True,    # paper: False. Why: a rest is not a played C.
)
TINY = Preset(
    codec=TINY_CODEC, lm=TINY_LM,
    codec_steps=3000,            # paper: 300k. Why: 3 minutes on 2 CPU cores.
    codec_batch=16,              # paper: 64. Why: the same.
    codec_crop_seconds=0.24,     # paper: 1. Why: on a CPU the number of updates limits learning.
    codec_lr=1e-3,               # paper: 3e-4. Why: 100x fewer steps; 2e-3 lost the melody.
    codec_quantizer_warmup=0.5,  # paper: 0. Why: codebooks fitted to an untrained encoder lose pitch.
    codec_grad_clip=10.0,        # paper: none. Why: one gradient spike once silenced the decoder.
    lm_steps=1500,               # paper: 1M. Why: fewer steps cost adherence (NOTES, "LM training steps").
    lm_batch=8,                  # paper: 192. Why: updates, not windows per update, limit the tiny LM.
    lm_lr=2e-3,                  # paper: 1e-4. Why: tiny models take larger steps.
    lm_warmup=100,               # paper: 4000. Why: 1500 steps in all.
)


# ==== the small recipe: the paper's MusicGen-small (§4.1) on the paper's 32 kHz EnCodec, for GPUs ======
# Codec: EncodecConfig() unchanged (SEANet, 32 kHz, hop 640 = 50 Hz, 4 × 2048 codes, MS-STFT adversary).
# LM: LMConfig() (D 1024, 24 layers, 16 heads, FFN 4096, 30 s windows, delay pattern, melody prepended)
# but the text encoder: 302M in the blocks' self-attention and FFNs (24 · 12 · D², the paper's "300M"),
# 420M with cross-attention, embeddings and heads, + 86M of text encoder. Budgets: the paper's. Not in
# stages.py, so not here: fp32 on one device, no gradient accumulation (lm_batch 192 is the paper's over
# 32 GPUs; a 30 s window takes ~3.7 GB of activations: pass --batch-size what fits), no weight EMA (paper:
# 0.99). Clips under 30 s are skipped (the toy clips are 4 s: give --data). tests/test_small_preset.py.
SMALL_LM = replace(
    LMConfig(),
    text_encoder="scratch",      # paper: "t5", frozen, pretrained. Why: stages.train_lm builds a word vocabulary,
                                 # not T5's; trained with the LM at T5-base's size (768 wide, 12 layers, 12 heads).
)
SMALL = Preset(
    lm=SMALL_LM,
    lm_lr=1e-4,                  # paper: D-Adaptation for the 300M. Why: stages.py has plain AdamW (Preset()'s).
)


# ==== fine-tuning a published MusicGen (--init-from FOLDER; published/finetune.py) ======================
# The LM's shapes and its training fields come from the published model (LMConfig(): the paper's);
# only the budgets change. The community's recipes: full fine-tuning at lr 1e-5 (chavinlo's
# musicgen_trainer), LoRA at 2e-4 (ylacombe's musicgen-dreamboothing).
FINETUNE = Preset(
    lm_steps=2000,               # paper: 1M from scratch. Why: a fine-tune adapts; it does not start from nothing.
    lm_batch=4,                  # paper: 192. Why: 30 s windows on one GPU (or a patient CPU).
    lm_lr=1e-5,                  # paper: 1e-4. Why: small steps keep what the published model knows.
    lm_warmup=100,               # paper: 4000. Why: 2000 steps in all.
)
FINETUNE_LORA = replace(
    FINETUNE,
    lm_lr=2e-4,                  # full fine-tune: 1e-5. Why: B starts at 0 and only r · (in + out) numbers learn.
)
PRESETS = {
    "tiny": TINY,
    "small": SMALL,
    "finetune": FINETUNE,
    "finetune-lora": FINETUNE_LORA,
}


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ==== how long the run will take on this machine: a few timed steps of both models, before any work ====
def seconds_per_step(preset: "Preset", device, steps: int = 3) -> dict:
    """{"codec": (warm-up step, quantized step), "lm": step} in seconds on this machine: the models' forward,
    loss, backward and optimizer step timed on random inputs of the stages' shapes (the median of `steps`
    after one call that warms up). Data reading, evaluations and samples come on top; the adversary too."""
    torch.manual_seed(0)
    codec = EncodecModel(preset.codec).to(device)
    reconstruction_loss = ReconstructionLoss(preset.codec).to(device)
    crop = max(1, round(preset.codec_crop_seconds * codec.frame_rate)) * codec.hop_length
    wav = 0.1 * torch.randn(preset.codec_batch, 1, crop, device=device)  # (B, 1, crop)
    lm = LMModel(lm_config_for(codec, preset.lm, text_vocab_size=64)).to(device)
    codes = torch.randint(0, codec.codebook_size, (preset.lm_batch, codec.n_q, lm.cfg.window_frames), device=device)
    melody = 0.1 * torch.randn(preset.lm_batch, 1, lm.cfg.window_frames * codec.hop_length, device=device)
    chroma = lm.chroma(melody)  # (B, 1, N) -> (B, F, 12): once, as the stage's loader keeps each window's
    ids, mask = torch.randint(1, 64, (preset.lm_batch, 12), device=device), torch.ones(preset.lm_batch, 12, dtype=torch.bool, device=device)
    optimizers = {"codec": torch.optim.Adam(codec.parameters(), lr=0.0), "lm": torch.optim.AdamW(lm.parameters(), lr=0.0)}
    timed = {}
    for name in ("codec warm-up", "codec", "lm"):
        times = []
        for _ in range(steps + 1):
            began = time.perf_counter()
            if name == "lm":
                text, text_mask = lm.encode_text(ids, mask)  # (B, L) -> (B, L, D)
                loss = lm.compute_loss(codes, text, text_mask, chroma)[0]
            else:
                recon, _, commitment = codec(wav, quantize=name == "codec")  # (B, 1, crop) -> (B, 1, crop)
                loss = reconstruction_loss(wav, recon, commitment)[0]
            loss.backward()
            optimizers[name.split()[0]].step()
            optimizers[name.split()[0]].zero_grad(set_to_none=True)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()  # a GPU runs ahead of Python: wait for the step to end
            times.append(time.perf_counter() - began)
        timed[name] = sorted(times[1:])[len(times[1:]) // 2]
    return dict(codec=(timed["codec warm-up"], timed["codec"]), lm=timed["lm"])


def announce(preset: "Preset", stages: list, per_step: dict, out: Path) -> float:
    """Print how long the stages' steps will take at `per_step` (seconds_per_step's) and what the run
    writes; returns the seconds."""
    warmup = round(preset.codec_quantizer_warmup * preset.codec_steps)
    seconds = {"codec": warmup * per_step["codec"][0] + (preset.codec_steps - warmup) * per_step["codec"][1],
               "lm": preset.lm_steps * per_step["lm"]}
    seconds = {stage: seconds[stage] for stage in stages}
    print("on this machine the steps will take about " + ", ".join(
        f"{stage} {seconds[stage] / 60:.1f} min ({getattr(preset, stage + '_steps')} steps)" for stage in stages)
          + f"; data, evaluations and samples add some. It writes {out}/"
          + ", ".join(name for stage, name in (("codec", "codec.pt"), ("lm", "lm.pt, samples/*.wav")) if stage in stages)
          + " and index.html.")
    return sum(seconds.values())


# ==== samples: what a reader listens to at the end =====================================================
def write_samples(out_dir, data_dir, n_text=4, seed=0):
    """A few held-out descriptions, one melody-conditioned sample and one continuation → samples/*.wav."""
    out = Path(out_dir)
    model = MusicGen.load(out)
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    clips = (data.load_clips(data_dir, model.sample_rate, split="heldout", limit=n_text)
             or data.load_clips(data_dir, model.sample_rate, limit=n_text))  # the first few, read alone
    torch.manual_seed(seed)
    written = []
    audio = model.generate([c.description for c in clips])  # (B, 1, N)
    for i, (clip, wav) in enumerate(zip(clips, audio)):
        written.append((samples / f"text_{i}.wav", wav, clip.description))
    melody_clip = clips[0]
    melody = melody_clip.melody_wav if melody_clip.melody_wav is not None else melody_clip.wav
    if model.lm.melody_projection is not None:  # (a published text-to-music model has no melody input)
        wav = model.generate_with_chroma([clips[1 % len(clips)].description], melody[None], model.sample_rate)[0]
        written.append((samples / "melody_reference.wav", melody, "the melody given as chroma"))
        written.append((samples / "melody.wav", wav, f"{clips[1 % len(clips)].description} + that melody"))
    prompt = clips[0].wav[None, :, :model.sample_rate * 2]  # the first 2 s of a held-out clip
    wav = model.generate_continuation(prompt, model.sample_rate, [clips[0].description])[0]
    written.append((samples / "continuation.wav", wav, f"continues 2 s of: {clips[0].description}"))
    for path, wav, caption in written:
        write_audio(path, wav.cpu(), model.sample_rate)
        print(f"  {path}: {caption}")
    return [path for path, _, _ in written]


# ==== every config field from the command line, nanoGPT-style: --lm.dim=256 --codec.n_q=8 --lm_steps=500 ====
OVERRIDABLE = {"lm.": LMConfig, "codec.": EncodecConfig, "": Preset}  # prefix -> the dataclass it sets


def recipe_rows(preset: "Preset") -> list:
    """[(config, field, this run's value, the paper's)] for every field where `preset` is not the paper's."""
    rows = []
    for name, ours, paper in (("EncodecConfig", preset.codec, EncodecConfig()), ("LMConfig", preset.lm, LMConfig()),
                              ("Preset", preset, Preset())):
        rows += [(name, f.name, getattr(ours, f.name), getattr(paper, f.name)) for f in fields(paper)
                 if f.name not in ("codec", "lm") and getattr(ours, f.name) != getattr(paper, f.name)]
    return rows


def parse_value(text: str, kind):
    """The command-line text of a field of type `kind` (int, float, bool, str, tuple, or X | None) as a
    value of that type; ValueError if it is not one. Tuples are written 8,5,4,2; None as none."""
    if isinstance(kind, types.UnionType):  # X | None
        options = [k for k in kind.__args__ if k is not type(None)]
        return None if text.lower() == "none" else parse_value(text, options[0])
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() in ("true", "1")
    if kind is tuple:
        return tuple(int(part) if part.strip().lstrip("-").isdigit() else float(part) for part in text.split(","))
    return kind(text)  # int, float, str: int("2.5") fails, as it should


KIND_NAMES = {int: "an int", float: "a float", bool: "true or false", str: "a string", tuple: "numbers like 8,5,4,2"}
FROM_THE_CODEC = ("n_q", "codebook_size", "frame_rate", "sample_rate")  # the LM copies these (lm_config_for)


def apply_overrides(preset: "Preset", options: list) -> "Preset":
    """`preset` with each --PREFIX.FIELD=VALUE of `options` applied (LMConfig, EncodecConfig, Preset
    fields). ValueError, one line naming the option, for an unknown name or a value of the wrong type."""
    changes = {prefix: {} for prefix in OVERRIDABLE}
    for option in options:
        name, equals, text = option.removeprefix("--").partition("=")
        if not option.startswith("--") or not equals:
            raise ValueError(f"unrecognized argument {option!r} (a config field is set as --lm.dim=256)")
        prefix = next(p for p in OVERRIDABLE if name.startswith(p))
        cls, field_name = OVERRIDABLE[prefix], name[len(prefix):]
        kinds = {f.name: f.type for f in fields(cls) if f.name not in ("lm", "codec")}
        if field_name not in kinds:
            raise ValueError(f"unknown option --{name}: {cls.__name__} has no field {field_name!r} "
                             f"(its fields: {', '.join(kinds)})")
        if prefix == "lm." and field_name in FROM_THE_CODEC:
            raise ValueError(f"--{name}: the LM takes {field_name} from the codec; set --codec.{field_name}")
        try:
            changes[prefix][field_name] = parse_value(text, kinds[field_name])
        except ValueError as error:
            kind = kinds[field_name]
            kind = " or ".join(KIND_NAMES.get(k, "none") for k in getattr(kind, "__args__", (kind,)))
            raise ValueError(f"--{name}={text}: {cls.__name__}.{field_name} takes {kind} ({error})") from None
    return replace(preset, lm=replace(preset.lm, **changes["lm."]), codec=replace(preset.codec, **changes["codec."]),
                   **changes[""])


def check_numbers(args, preset: "Preset"):
    """Every number of the command line, and the preset's after the overrides, in its range: one line
    naming the flag, exit 2, before any work."""
    for flag, value, low in (("--max-steps", args.max_steps, 1), ("--batch-size", args.batch_size, 1),
                             ("--eval-every", args.eval_every, 1), ("--micro-batch", args.micro_batch, 0),
                             ("--workers", args.workers, 0), ("--seed", args.seed, 0)):
        if value is not None and value < low:
            fail(f"{flag} must be at least {low}, got {value}")
    if args.lr is not None and not 0 < args.lr < math.inf:
        fail(f"--lr must be a positive number, got {args.lr}")
    p = preset
    for name, ok in (("codec_steps", p.codec_steps >= 1), ("lm_steps", p.lm_steps >= 1),
                     ("codec_batch", p.codec_batch >= 1), ("lm_batch", p.lm_batch >= 1),
                     ("codec_lr", 0 < p.codec_lr < math.inf), ("lm_lr", 0 < p.lm_lr < math.inf),
                     ("codec_crop_seconds", 0 < p.codec_crop_seconds < math.inf),
                     ("codec_quantizer_warmup", 0 <= p.codec_quantizer_warmup < 1),
                     ("codec_grad_clip", 0 <= p.codec_grad_clip < math.inf), ("lm_warmup", p.lm_warmup >= 0),
                     ("n_clips", p.n_clips >= 1), ("lm.window_seconds", 0 < p.lm.window_seconds < math.inf)):
        if not ok:
            value = p.lm.window_seconds if name == "lm.window_seconds" else getattr(p, name)
            fail(f"--{name}={value} is out of range")


def checked_data(data_dir, out: Path, skip_bad: bool, window_seconds: float, rank) -> Path:
    """The dataset folder checked before any training (data.check_dataset: the manifest and every audio
    file's header). Problems: a few lines naming them, grouped, and exit 2; with --skip-bad the good
    clips alone, through a manifest of their absolute paths in OUT/checked_data. Returns the folder
    the stages read."""
    manifest = Path(data_dir) / "manifest.jsonl"
    try:
        good, problems = data.check_dataset(data_dir)
    except OSError as error:
        fail(str(error))
    count = sum(len(examples) for examples in problems.values())
    if count == 1 and not skip_bad:  # one problem, one line
        fail(f"{manifest}, {next(iter(problems.values()))[0]}"
             + (f" ({len(good)} clip(s) fine: --skip-bad trains on those)" if good else ""))
    if problems and (not skip_bad or not good):
        print(f"error: {count} problem(s) in {manifest}, {len(good)} clip(s) fine"
              + (" (--skip-bad trains on those):" if good else ":"), file=sys.stderr)
        for kind, examples in problems.items():
            print(f"  {kind} ({len(examples)}): " + "; ".join(examples[:3]) + ("; ..." if len(examples) > 3 else ""),
                  file=sys.stderr)
        sys.exit(2)
    if not good:
        fail(f"{manifest}: no entries")
    if not any(entry["split"] == "train" and seconds >= window_seconds for entry, seconds in good):
        fail(f"no training clip in {data_dir} is at least {window_seconds:g} s long, the LM's window: "
             f"give longer clips or a shorter window (--lm.window_seconds=...)")
    if not problems:
        return Path(data_dir)
    if rank.main:
        print(f"--skip-bad: {count} clip(s) skipped (" + ", ".join(f"{k} {len(v)}" for k, v in problems.items())
              + f"), {len(good)} kept")
        folder = out / "checked_data"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for entry, _ in good:
            entry = dict(entry, path=str((Path(data_dir) / entry["path"]).resolve()),
                         attributes=dict(entry["attributes"]))
            if "melody_path" in entry["attributes"]:
                entry["attributes"]["melody_path"] = str((Path(data_dir) / entry["attributes"]["melody_path"]).resolve())
            lines.append(json.dumps(entry))
        (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    ddp.barrier(rank)
    return out / "checked_data"


def finetune_request(args) -> FineTune:
    """--init-from and its flags → a checked FineTune (published/finetune.py), or one line and exit 2
    before any work: a missing or unsupported folder, a shape field changed, LoRA's numbers out of range."""
    if args.stage == "codec":
        fail("--init-from fine-tunes the LM; the published EnCodec stays frozen (leave out --stage codec)")
    if args.data == "data/toy" and not (Path(args.data) / "manifest.jsonl").exists():
        fail("--init-from needs --data DIR: your folder of audio files and its manifest.jsonl (README: your own data)")
    lm_changes = {}
    for option in args.overrides:
        if option.startswith("--codec."):
            fail(f"{option.partition('=')[0]}: with --init-from the codec is the published one, frozen")
        if option.startswith("--lm."):  # checked and parsed as for a run from scratch, then kept by name
            try:
                parsed = apply_overrides(replace(TINY, lm=LMConfig()), [option]).lm
            except ValueError as error:
                fail(str(error))
            name = option.removeprefix("--lm.").partition("=")[0]
            lm_changes[name] = getattr(parsed, name)
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets else None
    finetune = FineTune(args.init_from, lm_changes, args.lora_rank, args.lora_alpha, targets, args.merge)
    try:
        finetune.check()
        resumed = Path(args.out) / "lm.pt"
        if args.resume and resumed.exists():  # continues this fine-tune: the same base, the same way
            finetune.check_resume(read_checkpoint(resumed, "LM"), resumed)
    except (PretrainedError, ValueError, FileNotFoundError) as error:  # one line naming the file or the flag
        fail(str(error))
    return finetune


def fail(message: str):
    """Bad input: one line on stderr, exit code 2, before any work is spent."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train MusicGen from scratch: stage 1 the codec, stage 2 the LM on its codes (paper §4.1). "
                    "With no argument it builds the toy dataset, trains both stages and writes samples.")
    p.add_argument("--stage", choices=["codec", "lm", "all"], default="all", help="what to train (default: all)")
    p.add_argument("--data", default="data/toy",
                   help="folder with audio + manifest.jsonl (default data/toy, generated if missing)")
    p.add_argument("--out", default="runs/tiny", help="run directory for checkpoints and samples")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="tiny (default): minutes on a 2-core CPU (a bigger run: override fields, e.g. --lm.dim=384 "
                        "--lm_steps=10000); small: the paper's MusicGen-small for GPUs (clips of 30 s or more; see "
                        "SMALL); finetune, finetune-lora: the budgets with --init-from (the default there)")
    p.add_argument("--max-steps", type=int, help="override the preset's steps for the chosen stage(s)")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size for the chosen stage(s)")
    p.add_argument("--lr", type=float, help="override the preset's learning rate for the chosen stage(s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (data order, init, dropout)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), or a torch device name")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--eval-every", type=int, default=500, help="steps between held-out evaluations")
    p.add_argument("--micro-batch", type=int, default=0,
                   help="examples per forward pass in each process; the rest of its share is gradient "
                        "accumulation (default 0: the whole share at once)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes reading audio (default 0: none)")
    p.add_argument("--compile", action="store_true", help="torch.compile the LM (opt-in; for GPUs)")
    p.add_argument("--skip-bad", action="store_true",
                   help="train on the clips that pass the data check, naming those skipped (default: refuse)")
    tune = p.add_argument_group("fine-tuning a published MusicGen (published/finetune.py)")
    tune.add_argument("--init-from", metavar="FOLDER",
                      help="start the LM stage from a published MusicGen folder (save_pretrained layout, e.g. "
                           "facebook/musicgen-small); its EnCodec and T5 stay frozen")
    tune.add_argument("--lora-rank", type=int, default=0, metavar="R", help="train LoRA adapters of rank R only (default 0: "
                                                               "every LM weight but T5's)")
    tune.add_argument("--lora-alpha", type=float, metavar="A", help="LoRA's alpha: the change is scaled by alpha / rank "
                                                       "(default: the rank)")
    tune.add_argument("--lora-targets", metavar="NAMES", help="comma-separated projections to adapt (default: "
                                             + ",".join(lora.TARGETS) + ", those the model has)")
    tune.add_argument("--merge", action="store_true", help="fold the adapters into the weights when the run ends")
    p.add_argument("--no-samples", action="store_true",
                   help="no samples on the training page nor in OUT/samples (a fine-tune on a CPU: minutes each)")
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="recompute each decoder block in backward instead of storing it: less memory, one more "
                        "forward pass of time")
    p.epilog = ("Any config field too, after the preset: --lm.FIELD=V (LMConfig), --codec.FIELD=V (EncodecConfig), "
                "--FIELD=V (Preset), e.g. --lm.dim=256 --codec.n_q=8 --lm_steps=500.")
    args, options = p.parse_known_args(argv)
    args.overrides = options
    return args


def main(argv=None):
    args = parse_args(argv)
    rank = ddp.setup(pick_device(args.device))  # under torchrun: this process's rank and device
    device = rank.device
    # The CPU's cores are shared by the processes on this machine.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if device.type == "cuda":  # TF32 matrix products: float32 range, 10-bit mantissa, several times faster
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        run(args, rank)
    except data.DataError as error:  # the stage saved its checkpoint first
        fail(f"{error}; the run is saved at its last step: fix or remove the file, then --resume")
    except PretrainedError as error:  # a published folder that broke after its check (one line)
        fail(str(error))
    finally:
        ddp.teardown()


def run(args, rank):
    device = rank.device
    if not args.init_from and (args.lora_rank or args.lora_alpha is not None or args.lora_targets or args.merge):
        fail("--lora-rank, --lora-alpha, --lora-targets and --merge fine-tune a published model: add --init-from FOLDER")
    finetune = finetune_request(args) if args.init_from else None
    preset = PRESETS[args.preset or ("tiny" if not finetune else "finetune-lora" if args.lora_rank else "finetune")]
    if finetune:
        args.stage = "lm"
        # The published LM is LMConfig()'s (30 s windows) but for these fields: the data check and the page's diff.
        preset = replace(preset, lm=replace(LMConfig(), **finetune.lm_changes))
    overrides = {}
    for stage in (["codec", "lm"] if args.stage == "all" else [args.stage]):
        if args.max_steps is not None:
            overrides[f"{stage}_steps"] = args.max_steps
        if args.batch_size is not None:
            overrides[f"{stage}_batch"] = args.batch_size
        if args.lr is not None:
            overrides[f"{stage}_lr"] = args.lr
    try:
        preset = apply_overrides(replace(preset, **overrides), args.overrides)
    except ValueError as error:
        fail(str(error))
    check_numbers(args, preset)
    if args.stage in ("lm", "all") and not finetune:  # a pattern the LM could not read fails now, not after the codec stage
        try:
            check_input_codebooks(replace(preset.lm, n_q=preset.codec.n_q))
        except ValueError as error:
            fail(f"{error} (train.py --lm.input_codebooks=none reads all)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.time()
    if not (Path(args.data) / "manifest.jsonl").exists():
        if args.data != "data/toy":
            fail(f"{Path(args.data) / 'manifest.jsonl'} not found (see README: your own data)")
        if rank.main:
            print(f"building the toy dataset ({preset.n_clips} clips) in {args.data}")
            toy.make_toy_dataset(args.data, n=preset.n_clips, seed=args.seed)
        timings["data"] = time.time() - started
    ddp.barrier(rank)  # the other processes wait for rank 0's dataset
    data_dir = checked_data(args.data, out, args.skip_bad, preset.lm.window_seconds if args.stage != "codec" else 0, rank)
    if rank.main:  # the training page, rewritten as the run goes (page.py)
        page.start(out, recipe_rows(preset), make_pattern(preset.lm.pattern, preset.codec.n_q).grid(8),
                   f"MusicGen fine-tuned from {args.init_from}: {out}" if finetune else f"MusicGen from scratch: {out}")
        print(f"training page: {out / 'index.html'} (reload it to follow the run)")
    stages = ["codec", "lm"] if args.stage == "all" else [args.stage]
    estimate = None
    if rank.main and not finetune and sum(getattr(preset, stage + "_steps") for stage in stages) >= 100:
        estimate = announce(preset, stages, seconds_per_step(preset, device), out)  # a short run needs none
    common = dict(seed=args.seed, device=device, resume=args.resume, eval_every=args.eval_every, rank=rank,
                  micro_batch=args.micro_batch, workers=args.workers)
    if args.stage in ("codec", "all"):
        t0 = time.time()
        train_codec(out, data_dir, preset, **common)
        timings["codec"] = time.time() - t0
    ddp.barrier(rank)  # codec.pt is written (by rank 0) before any process reads it
    if args.stage in ("lm", "all"):
        t0 = time.time()
        train_lm(out, data_dir, preset, compile=args.compile, snapshots=() if args.no_samples else page.SNAPSHOTS,
                 finetune=finetune,
                 checkpoint_activations=args.checkpoint_activations, **common)
        timings["lm"] = time.time() - t0
        if rank.main and not args.no_samples:
            t0 = time.time()
            print(f"samples in {out / 'samples'}:")
            write_samples(out, data_dir, seed=args.seed)
            timings["samples"] = time.time() - t0
    if rank.main:
        print("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
              + f"; total {time.time() - started:.0f} s, of which the training page {page.load(out)['seconds']:.0f} s"
              + (f" (the steps were forecast at {estimate:.0f} s)" if estimate else ""))
        print(f'generate more: python generate.py --run {out} --text "a cheerful fast tune on a plucked guitar" --out out.wav')


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted; the last checkpoint is loadable, continue with --resume")
