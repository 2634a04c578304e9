"""lora.py: LoRA written by hand. At initialisation the adapted model is the base model exactly; merged
equals unmerged; a training step changes the adapters alone; and where peft is installed (test-only)
our adapted layer computes what peft's LoRA computes with the same A and B."""
import importlib.util

import pytest
import torch
import torch.nn as nn

import lora
from lm import LMConfig, LMModel

CARD = 16


def tiny_lm(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    cfg = LMConfig(n_q=4, codebook_size=CARD, frame_rate=25.0, sample_rate=16000, dim=32, n_layers=2, n_heads=2,
                   ffn_dim=64, window_seconds=1.0, text_vocab_size=12, text_dim=16, text_layers=1, text_heads=2,
                   chroma_n_fft=8192, chroma_hop_length=2048, dropout=dropout)
    return LMModel(cfg)


def batch(lm, B=2, T=20):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, CARD, (B, 4, T), generator=g)
    text, mask = lm.encode_text(torch.randint(2, 12, (B, 5), generator=g), torch.ones(B, 5, dtype=torch.bool))
    return codes, text, mask, lm.null_chroma.expand(B, -1, -1).clone()


def test_at_initialisation_the_adapted_model_is_the_base_model_exactly():
    lm = tiny_lm()
    codes, text, mask, chroma = batch(lm)
    lm.eval()
    before = lm.compute_loss(codes, text, mask, chroma)[1]
    names = lora.add_lora(lm, rank=4, alpha=8)
    assert len(names) == 2 * len(lora.TARGETS)  # every projection of both layers
    assert torch.equal(lm.compute_loss(codes, text, mask, chroma)[1], before)  # B = 0: exactly, not nearly


def test_merged_equals_unmerged_and_only_the_adapters_train():
    lm = tiny_lm()
    lora.add_lora(lm, rank=4, alpha=8)
    trainable = {name for name, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    before = {name: t.clone() for name, t in lm.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    lm.train()
    codes, text, mask, chroma = batch(lm)
    lm.compute_loss(codes, text, mask, chroma)[0].backward()
    optimizer.step()
    changed = {name for name, t in lm.state_dict().items() if not torch.equal(t, before[name])}
    assert changed and all(".lora_A" in n or ".lora_B" in n for n in changed)  # the published weights untouched
    assert any(".lora_B" in n for n in changed)  # B left zero: the change B A is now non-zero
    lm.eval()
    codes, text, mask, chroma = batch(lm)
    unmerged = lm.compute_loss(codes, text, mask, chroma)[1]
    assert lora.merge_lora(lm) == 2 * len(lora.TARGETS)
    assert not any(isinstance(m, lora.LoRALinear) for m in lm.modules())
    merged = lm.compute_loss(codes, text, mask, chroma)[1]
    assert torch.allclose(merged, unmerged, rtol=1e-5, atol=0)


def test_the_adapters_alone_are_a_small_state_dict():
    lm = tiny_lm()
    lora.add_lora(lm, rank=2, alpha=2)
    adapters = lora.lora_state_dict(lm)
    assert adapters and set(adapters) == {n for n, p in lm.named_parameters() if p.requires_grad}
    assert sum(t.numel() for t in adapters.values()) < 0.25 * sum(p.numel() for p in lm.parameters())


def test_a_layer_by_hand_and_a_typo_in_the_targets():
    base = nn.Linear(6, 5)
    layer = lora.LoRALinear(base, rank=2, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    expected = base(x) + 3.0 * x @ (layer.lora_B @ layer.lora_A).t()  # W x + (α / r) B A x, α / r = 3
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.allclose(layer.merged()(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="to_qq"):
        lora.add_lora(tiny_lm(), rank=2, alpha=2, targets=("to_qq",))


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft (test-only) is not installed")
def test_our_layer_equals_peft_lora_with_the_same_a_and_b():
    import peft  # noqa: the reference library, test-only
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(8, 6))
    reference = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=12, target_modules=["proj"],
                                                           lora_dropout=0.0, init_lora_weights=True))
    ours = lora.LoRALinear(nn.Linear(8, 6), rank=4, alpha=12)
    their_layer = reference.base_model.model.proj
    with torch.no_grad():
        ours.base.load_state_dict(their_layer.base_layer.state_dict())
        ours.lora_A.copy_(their_layer.lora_A["default"].weight)
        their_layer.lora_B["default"].weight.normal_()
        ours.lora_B.copy_(their_layer.lora_B["default"].weight)
    x = torch.randn(5, 8)
    assert torch.allclose(ours(x), reference(x), atol=1e-6)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputing each block in the backward pass (dropout masks replayed) changes memory, not numbers."""
    grads = []
    for checkpoint in (False, True):
        lm = tiny_lm(dropout=0.1)  # dropout on: the replayed RNG state must give the same masks
        lm.transformer.checkpoint_activations = checkpoint
        lm.train()
        codes, text, mask, chroma = batch(lm)
        torch.manual_seed(5)
        loss = lm.compute_loss(codes, text, mask, chroma)[0]
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in lm.parameters() if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    assert torch.equal(loss_a, loss_b) and len(grads_a) == len(grads_b)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads_a, grads_b))
