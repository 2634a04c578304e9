"""Fine-tuning a published MusicGen on your own music (`train.py --init-from FOLDER`): what trains, what
the run folder holds, and how it loads back.

    python train.py --init-from musicgen-small --data my_music --out runs/mine                   # full
    python train.py --init-from musicgen-small --data my_music --out runs/mine --lora-rank 16    # LoRA
    python generate.py --run runs/mine --text "..."          # or MusicGen.load("runs/mine")

The training itself is stage 2 of the recipe (stages.train_lm), started from the published weights
instead of a new LM: the published EnCodec encodes the user's folder once into the codes cache and stays
frozen, T5 stays frozen (§4.1: both are frozen in MusicGen's own training), and the LM trains on the
paper's objective with the published model's condition dropout (0.3; melody 0.2). What trains:

    full   every LM weight but T5's: the decoder, the K embeddings and heads, T5's projection (and the
           melody projection of a melody model)
    LoRA   lora.add_lora on the decoder's projections (lora.py): only the adapters, r · (in + out) each

A fine-tuned run does not copy the published weights. RUN/lm.pt holds what training changed (the
adapters, or every trained weight), the LM config it trained with, the step and the optimizer, and a
pointer to the published folder with a SHA-256 of its files. `MusicGen.load(RUN)` reads that folder
(pretrained.load_pretrained), refuses it in one line if it is gone or changed, puts the trained tensors
in and folds LoRA's adapters into the weights (W' = W + (α / r) · B A), so generation runs exactly as
fast as the published model. `--merge` saves the run that way: lm.pt then holds the merged weights.

Only the training fields of LMConfig may change (FINETUNE_FIELDS: the window, dropout, the loss's
start weight, guidance); the shapes are the published model's.
"""
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import lora
from lm import LMConfig, LMModel
from published.pretrained import PretrainedError, load_pretrained, read_config, supported_configs

# The LMConfig fields a fine-tune may set with --lm.FIELD=V: how it trains and generates, never a shape.
FINETUNE_FIELDS = ("window_seconds", "dropout", "cfg_dropout", "melody_dropout", "word_dropout", "start_frames",
                   "start_weight", "cfg_coef", "trim_prompt_lookahead")
# The files of a published folder that define the model (load_pretrained reads these): the checksum's input.
BASE_FILES = ("config.json", "tokenizer.json", "preprocessor_config.json", "*.safetensors", "*.bin", "*.index.json")


class FinetuneError(PretrainedError):
    """A fine-tuned run that cannot be loaded or continued: one line naming the run and the problem."""


@dataclass
class FineTune:
    """What `train.py --init-from` asks for. base: the published folder; lm_changes: the --lm.FIELD=V
    of FINETUNE_FIELDS; lora_rank 0 trains every LM weight (full fine-tuning), r > 0 LoRA's adapters of
    rank r with scale lora_alpha / r on lora_targets (None: lora.TARGETS that the model has); merge:
    fold the adapters into the weights when the run ends."""
    base: str
    lm_changes: dict
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_targets: tuple | None = None
    merge: bool = False

    def check(self):
        """Every problem this can see before any work, as FinetuneError: the base folder readable and of a
        supported kind, only training fields changed, LoRA's numbers in range."""
        config = read_config(self.base)
        supported_configs(config, Path(self.base) / "config.json")  # PretrainedError, one line
        shaped = [name for name in self.lm_changes if name not in FINETUNE_FIELDS]
        if shaped:
            raise FinetuneError(f"--lm.{shaped[0]}: a fine-tune keeps the published model's shapes; it may set "
                                f"{', '.join('--lm.' + f for f in FINETUNE_FIELDS)}")
        if self.lora_rank < 0 or (self.lora_alpha is not None and not self.lora_alpha > 0):
            raise FinetuneError(f"--lora-rank must be at least 1 and --lora-alpha positive, got {self.lora_rank} "
                                f"and {self.lora_alpha}")
        for target in self.lora_targets or ():
            if target not in lora.TARGETS or (target.startswith("cross_attention")
                                              and config["model_type"] == "musicgen_melody"):
                raise FinetuneError(f"--lora-targets: {target!r} is not a projection of this model's decoder "
                                    f"(its projections: {', '.join(lora.TARGETS)}; a melody model has no cross_attention)")
        if self.lora_rank == 0 and (self.merge or self.lora_alpha is not None or self.lora_targets is not None):
            raise FinetuneError("--lora-alpha, --lora-targets and --merge need --lora-rank R (LoRA fine-tuning)")

    def lora(self, cfg: LMConfig) -> dict | None:
        """LoRA's settings as stored in the run (None: full fine-tuning). The default targets skip the
        cross-attention of a model that has none (musicgen-melody prepends its text)."""
        if self.lora_rank == 0:
            return None
        targets = self.lora_targets or tuple(t for t in lora.TARGETS if cfg.text_fusion == "cross"
                                             or not t.startswith("cross_attention"))
        return dict(rank=self.lora_rank, alpha=float(self.lora_alpha or self.lora_rank), targets=list(targets))

    def load_base(self):
        """The published folder → (codec, lm, tokenizer) in our modules (pretrained.load_pretrained), the
        LM built with this fine-tune's training fields (lm.cfg: the published shapes, our window, ...)
        and, with LoRA, its adapters: then only they train (T5 is frozen either way)."""
        codec, lm, tokenizer = load_pretrained(self.base, changes=self.lm_changes)
        return codec, with_lora(lm.train(), self.lora(lm.cfg)), tokenizer

    def save(self, path, lm: LMModel, step: int, optimizer=None):
        """RUN/lm.pt of a fine-tune, atomically: the trained tensors alone (see the module docstring)."""
        has_adapters = any(isinstance(m, lora.LoRALinear) for m in lm.modules())
        save_finetuned(path, lm, self.base, self.lora(lm.cfg) if has_adapters else None, step, optimizer)

    def merged(self, lm: LMModel) -> LMModel:
        """--merge: the adapters folded into the weights (lora.merge_lora), in place; its trained tensors
        are then every LM weight but T5's, as a full fine-tune's."""
        lora.merge_lora(lm)
        lm.requires_grad_(True)
        lm.text_encoder.t5.requires_grad_(False)
        return lm

    def check_resume(self, ckpt: dict, path):
        """A checkpoint this fine-tune can continue: fine-tuned from this base (its checksum), the same way
        (full, or LoRA with the same settings), with its optimizer state. FinetuneError, one line, if not."""
        if "base" not in ckpt:
            raise FinetuneError(f"{path}: a run trained from scratch; --init-from continues only a fine-tune")
        optimizer_state(path, ckpt["step"])
        ours = self.lora(LMConfig(**ckpt["config"]))  # its config says which projections the model has
        if ckpt["lora"] != ours:
            raise FinetuneError(f"{path}: fine-tuned with LoRA {ckpt['lora']}, not {ours} (give the flags it started with)")
        check_base(ckpt["base"], path, folder=self.base)

    def resume(self, ckpt: dict, lm: LMModel, path) -> dict:
        """Put a fine-tune checkpoint's trained tensors into `lm` (from load_base), after check_resume;
        returns the optimizer's state (optimizer.pt)."""
        self.check_resume(ckpt, path)
        load_trained(lm, ckpt["model"], path)
        return optimizer_state(path, ckpt["step"])


def with_lora(lm: LMModel, lora_settings: dict | None) -> LMModel:
    """`lm` with LoRA's adapters when `lora_settings` says so (in place). Its trainable parameters are
    then what the fine-tune trains."""
    if lora_settings is not None:
        lora.add_lora(lm, lora_settings["rank"], lora_settings["alpha"], tuple(lora_settings["targets"]))
    return lm


def trained_state(lm: LMModel) -> dict:
    """The tensors a fine-tune changes: the parameters that train (T5 and, with LoRA, the base are frozen)."""
    return {name: p.detach().cpu().clone() for name, p in lm.named_parameters() if p.requires_grad}


def load_trained(lm: LMModel, state: dict, where):
    """Copy a fine-tune's trained tensors into `lm`: exactly the parameters that train there, no more."""
    expected = {name for name, p in lm.named_parameters() if p.requires_grad}
    if set(state) != expected:
        name = sorted(set(state) ^ expected)[0]
        raise FinetuneError(f"{where}: its trained tensors do not fit this LM ({name!r} is "
                            f"{'missing' if name in expected else 'unexpected'})")
    lm.load_state_dict(state, strict=False)


def base_checksum(folder) -> str:
    """SHA-256 over the names and bytes of the files that define a published model (BASE_FILES)."""
    digest = hashlib.sha256()
    paths = sorted({p for pattern in BASE_FILES for p in Path(folder).glob(pattern) if p.is_file()})
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def check_base(base: dict, where, folder=None) -> Path:
    """The run's base folder (or `folder`, the one given now) is there and unchanged: its checksum is the
    one saved when the fine-tune started. FinetuneError, one line, otherwise."""
    folder = Path(folder if folder is not None else base["folder"])
    if not (folder / "config.json").is_file():
        raise FinetuneError(f"{where}: fine-tuned from {folder}, which is gone (no config.json): put the published "
                            f"folder back there")
    if cached_checksum(folder.resolve()) != base["sha256"]:
        raise FinetuneError(f"{where}: fine-tuned from {base['folder']}, but the files of {folder} have changed since "
                            f"(SHA-256 differs): the adapters fit only the weights they were trained on")
    return folder


def save_finetuned(path, lm: LMModel, base_folder, lora_settings, step: int, optimizer=None):
    """A fine-tuned run's lm.pt, alone and small (what generation needs), and beside it optimizer.pt (what
    --resume needs too: AdamW's two moments, twice the trained tensors' bytes), each written atomically
    (temp file + rename), the optimizer first; both say their step, which a resume checks. Without an
    optimizer (--merge) optimizer.pt is removed: a merged run does not continue."""
    folder = Path(base_folder).resolve()
    states = Path(path).with_name("optimizer.pt")
    if optimizer is not None:
        atomic_save(dict(step=step, optimizer=optimizer.state_dict()), states)
    else:
        states.unlink(missing_ok=True)
    atomic_save(dict(config=asdict(lm.cfg), model=trained_state(lm), lora=lora_settings, step=step, vocab=None,
                     base=dict(folder=str(folder), sha256=cached_checksum(folder)), optimizer=None), path)


def atomic_save(obj: dict, path):
    tmp = Path(f"{path}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def optimizer_state(path, step: int) -> dict:
    """optimizer.pt beside a fine-tune's lm.pt (`path`), checked to be of the same step."""
    states = Path(path).with_name("optimizer.pt")
    if not states.is_file():
        raise FinetuneError(f"{path}: no optimizer.pt beside it (a --merge'd run does not continue)")
    saved = torch.load(states, map_location="cpu", weights_only=True)
    if saved.get("step") != step:
        raise FinetuneError(f"{states}: of step {saved.get('step')}, lm.pt of step {step} (a save was interrupted): "
                            f"start the fine-tune again")
    return saved["optimizer"]


_CHECKSUMS = {}  # folder -> (its files' sizes and times, checksum): a run saves often, the base never changes


def cached_checksum(folder: Path) -> str:
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())
    if _CHECKSUMS.get(folder, (None,))[0] != stamp:
        _CHECKSUMS[folder] = (stamp, base_checksum(folder))
    return _CHECKSUMS[folder][1]


def load_finetuned(ckpt: dict, where) -> tuple:
    """A fine-tuned run's lm.pt (read) → (codec, lm, tokenizer) in eval mode, the adapters merged."""
    folder = check_base(ckpt["base"], where)
    changes = {name: ckpt["config"][name] for name in FINETUNE_FIELDS if name in ckpt["config"]}
    codec, lm, tokenizer = load_pretrained(folder, changes=changes)
    with_lora(lm, ckpt["lora"])
    load_trained(lm, ckpt["model"], where)
    if ckpt["lora"] is not None:
        lora.merge_lora(lm)  # generation at the base model's speed (merged == unmerged: tests/test_lora.py)
    return codec, lm.eval(), tokenizer
