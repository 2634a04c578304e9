"""LoRA, written by hand (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

Fine-tuning a published MusicGen changes a few directions of its weight matrices, not all of them. LoRA
freezes each weight W (out × in) and learns a low-rank change beside it:

    h = W x + (α / r) · B A x          A: (r, in), B: (out, r), r ≪ min(in, out)

A starts random and B at zero, so at the first step the adapted model *is* the published one (B A = 0),
and the learned change B A has rank r: it costs r · (in + out) numbers instead of in · out. α / r keeps
the change's size comparable across ranks (the paper tunes α once and leaves it as r varies). After
training, the change folds into the weight, W' = W + (α / r) · B A (`merge`): the merged model runs
exactly as fast as the original.

Which weights: by default the decoder's attention and feed-forward projections (`TARGETS`, the names
in transformer.py), as the community's MusicGen fine-tunes do; the codec and the text encoder stay
frozen (paper §4.1: they are frozen during LM training anyway).

Shape letters: B batch, S steps, D width; `in` / `out` the features of a linear layer.
"""
import math

import torch
import torch.nn as nn

# The decoder's projections (transformer.DecoderBlock): self- and cross-attention W_Q, W_KV, W_O; FFN in, out.
TARGETS = ("self_attention.to_q", "self_attention.to_kv", "self_attention.to_out",
           "cross_attention.to_q", "cross_attention.to_kv", "cross_attention.to_out", "ffn.0", "ffn.2")


class LoRALinear(nn.Module):
    """A frozen linear layer `base` with the low-rank change (α / r) · B A beside it.

    Args:
        base: the nn.Linear (weight (out, in), bias or None) to adapt; its parameters are frozen.
        rank: r. alpha: α (the change is scaled by α / r).
    A is initialised as nn.Linear initialises its weight (Kaiming-uniform, as the LoRA authors' loralib
    and peft do), B with zeros.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base, self.rank, self.alpha = base, rank, alpha
        self.scaling = alpha / rank
        base.requires_grad_(False)
        out_features, in_features = base.weight.shape
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        # h = W x + (α / r) · B (A x): two thin products, never the (out × in) matrix B A itself.
        return self.base(x) + (x @ self.lora_A.t()) @ self.lora_B.t() * self.scaling  # (.., in) -> (.., out)

    def merged(self) -> nn.Linear:
        """The base layer with the change folded in: W' = W + (α / r) · B A (a copy; self is unchanged)."""
        layer = type(self.base)(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                                device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.base.weight + self.scaling * (self.lora_B @ self.lora_A))
            if self.base.bias is not None:
                layer.bias.copy_(self.base.bias)
        return layer


def add_lora(model: nn.Module, rank: int, alpha: float, targets=TARGETS) -> list:
    """Freeze every parameter of `model` and put a LoRALinear on each linear layer whose name ends with
    one of `targets`; only the adapters then train. Returns the adapted layers' names; ValueError if a
    target names no layer (a typo would otherwise train nothing)."""
    model.requires_grad_(False)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name, _ in found)]
    if missing:
        raise ValueError(f"LoRA target {missing[0]!r} names no linear layer of the model")
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, LoRALinear(module, rank, alpha))
    return [name for name, _ in found]


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter of `model` into its weight, in place (the model then holds plain linear layers
    again, with unchanged outputs up to rounding). Returns the number of layers merged."""
    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name, module in adapted:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.merged())
    return len(adapted)


def lora_state_dict(model: nn.Module) -> dict:
    """The adapters' tensors alone (what a fine-tuned run needs to save beside a pointer to its base)."""
    return {name: tensor for name, tensor in model.state_dict().items() if ".lora_A" in name or ".lora_B" in name}
