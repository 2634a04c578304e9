"""The decoding fast paths give what the plain paths give: transformer.Linear's (W·xᵀ)ᵀ for large weights
and few rows, half-precision attention computed in float32 on a CPU, and the SEANet codec's in-place
activations and sums and channels-last transposed convs. Their speed is benchmark.py's
business (`--versus`); here only that they change nothing a user could hear."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import encodec
import seanet
import transformer
from dataclasses import replace
from lm import LMConfig, MusicLM
from sampling import generate_codes
from transformer import Linear, attention


def test_linear_takes_the_fast_path_only_where_it_is_meant_and_gives_the_same_output():
    calls = []
    original = torch.mm
    for out_f, in_f, rows, fast in ((1024, 1024, 2, True), (2048, 1024, 4, True), (1024, 1024, 5, False),
                                    (256, 128, 2, False)):
        layer = Linear(in_f, out_f, bias=True)
        x = torch.randn(rows, 1, in_f)
        torch.mm = lambda *args: calls.append(1) or original(*args)
        try:
            y = layer(x)
        finally:
            torch.mm = original
        assert bool(calls) == fast and y.shape == (rows, 1, out_f)
        torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        calls.clear()


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_with_the_fast_path_gives_the_plain_paths_tokens(monkeypatch, use_cache):
    """An LM wide enough for the fast path (D 1024: every projection has ≥ 2^20 weights), sampled with a
    fixed seed: the same tokens as with every Linear on nn.Linear's plain path."""
    torch.manual_seed(0)
    lm = MusicLM(LMConfig(n_q=4, codebook_size=256, dim=1024, n_layers=1, n_heads=8, ffn_dim=1024,
                          window_seconds=1.0, text_encoder="scratch", text_vocab_size=12, text_dim=16,
                          text_layers=1, text_heads=2, melody_fusion="prepend", chroma_n_fft=8192,
                          chroma_hop_length=2048, sample_rate=16000)).eval()
    text, mask = lm.encode_text(torch.tensor([[2, 3, 4]]), torch.ones(1, 3, dtype=torch.bool))

    def run():
        return generate_codes(lm, text, mask, None, n_frames=12, cfg_coef=3.0, top_k=50, use_cache=use_cache,
                              generator=torch.Generator().manual_seed(3))
    fast = run()
    monkeypatch.setattr(Linear, "forward", nn.Linear.forward)
    assert torch.equal(fast, run())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_attention_runs_in_float32_on_a_cpu(dtype, monkeypatch):
    q, k, v = (torch.randn(2, 4, n, 16) for n in (1, 9, 9))
    mask = torch.rand(2, 1, 1, 9) > 0.3
    mask[1] = False  # a row with no key at all: exactly zero
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(transformer.F, "scaled_dot_product_attention",
                        lambda *args, **kwargs: seen.append(args[0].dtype) or sdpa(*args, **kwargs))
    out = attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    assert out.dtype == dtype and seen == [torch.float32] and (out[1] == 0).all()
    expected = attention(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), mask)
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)


def plain_seanet(monkeypatch):
    """Swap seanet.py's allocation-saving forms for their plain counterparts: every ELU makes a new
    tensor, the residual sum is `shortcut(x) + block(x)`, the transposed conv is nn.ConvTranspose1d's
    own call, and a 1x1 conv's zero padding goes through F.pad."""
    def block_forward(self, x):
        return self.shortcut(x) + self.block(x)

    def transposed_forward(self, x):
        y, right = self.conv(x), self.trim // 2
        return y[..., self.trim - right:y.shape[-1] - right]
    monkeypatch.setattr(seanet.SEANetResidualBlock, "forward", block_forward)
    monkeypatch.setattr(seanet.TrimmedConvTranspose1d, "forward", transposed_forward)
    monkeypatch.setattr(nn.ELU, "forward", lambda self, x: F.elu(x, self.alpha))
    pad1d = seanet.pad1d
    monkeypatch.setattr(seanet, "pad1d", lambda x, left, right, mode: F.pad(x, (0, 0), mode) if left == right == 0
                        else pad1d(x, left, right, mode))


def test_the_seanet_codecs_fast_forms_give_the_plain_forms_outputs_and_gradients(monkeypatch):
    """EnCodec's SEANet (ELU, reflect padding) with in-place activations and residual sums, and the
    transposed convs run channels-last: the plain forms' reconstruction and weight gradients, and codes
    decoded to the same audio. Autograd would also refuse an in-place write over a value it still needs."""
    torch.manual_seed(0)
    codec = encodec.EncodecModel(replace(encodec.EncodecConfig(), n_filters=4, dimension=8, codebook_size=16,
                                         lstm_layers=1, sample_rate=16000)).train()
    wav = torch.randn(2, 1, 2 * 640 + 37)
    twin = copy.deepcopy(codec)  # training updates the quantizer's codebooks: each side starts from the same

    def run(codec):
        torch.manual_seed(1)
        recon, codes, commitment = codec(wav)
        (recon.pow(2).mean() + commitment).backward()
        grads = {name: p.grad.clone() for name, p in codec.named_parameters() if p.grad is not None}
        with torch.no_grad():
            return recon.detach(), grads, codec.decode(codes)
    fast = run(codec)
    plain_seanet(monkeypatch)
    plain = run(twin)
    assert any(isinstance(m, nn.ELU) and m.inplace for m in codec.modules())
    torch.testing.assert_close(fast[0], plain[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast[2], plain[2], atol=1e-6, rtol=1e-5)
    assert fast[1].keys() == plain[1].keys() and len(fast[1]) > 20
    for name in fast[1]:
        torch.testing.assert_close(fast[1][name], plain[1][name], atol=1e-6, rtol=1e-4, msg=name)
