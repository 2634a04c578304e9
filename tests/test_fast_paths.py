"""The decoding fast paths give what the plain paths give: every form autotune.py may choose for
transformer.Linear (x·Wᵀ or (W·xᵀ)ᵀ, with or without oneDNN), for the FFN's GELU and for half-precision
attention on a CPU; and the SEANet codec's in-place activations and sums and channels-last transposed
convs. Which form is fastest is measured on the machine (autotune.py, tests/test_autotune.py) and
reported by experiments/benchmark.py; here only that no choice changes anything a user could hear."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autotune
import encodec
import transformer
from dataclasses import replace
from lm import LMConfig, LMModel
from musicgen import generate_codes
from transformer import GELU_FORMS, HALF_ATTENTION_FORMS, LINEAR_FORMS, Linear, attention


pytestmark = pytest.mark.usefixtures("fresh_autotune")  # tests/conftest.py


def spy(monkeypatch, forms, name):
    """Count the calls of one entry of a forms table."""
    calls = []
    form = forms[name]
    monkeypatch.setitem(forms, name, lambda *args: calls.append(1) or form(*args))
    return calls


@pytest.mark.parametrize("form", list(LINEAR_FORMS))
def test_every_linear_form_gives_F_linear_and_runs_only_for_a_few_rows(form, monkeypatch):
    calls = spy(monkeypatch, LINEAR_FORMS, form)
    autotune.FORCED["linear"] = form
    for out_f, in_f, shape, bias, fast in ((1024, 1024, (2, 1), True, True), (2048, 1024, (4,), False, True),
                                           (256, 128, (1, 2, 1), True, True), (1024, 1024, (5, 1), True, False)):
        layer = Linear(in_f, out_f, bias=bias)
        x = torch.randn(*shape, in_f)
        y = layer(x)
        assert bool(calls) == fast and y.shape == (*shape, out_f) and y.is_contiguous()
        torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        calls.clear()


def test_gelu_with_and_without_onednn_is_the_exact_gelu():
    x = torch.linspace(-6, 6, 4097)
    expected = 0.5 * x.double() * (1 + torch.erf(x.double() / 2 ** 0.5))  # x·Φ(x)
    for form in GELU_FORMS.values():
        torch.testing.assert_close(form(x).double(), expected, atol=2e-6, rtol=0)
        torch.testing.assert_close(form(x.bfloat16()).double(), expected, atol=0.04, rtol=0.008)  # bf16: 2^-7


def wide_lm(dtype=torch.float32):
    """An LM wide enough for the real size's shapes (D 1024), one layer."""
    torch.manual_seed(0)
    return LMModel(LMConfig(n_q=4, codebook_size=256, dim=1024, n_layers=1, n_heads=8, ffn_dim=1024,
                            window_seconds=1.0, text_encoder="scratch", text_vocab_size=12, text_dim=16,
                            text_layers=1, text_heads=2, melody_fusion="prepend", chroma_n_fft=8192,
                            chroma_hop_length=2048, sample_rate=16000)).eval().to(dtype)


FORMS = [("linear", name) for name in LINEAR_FORMS] + [("gelu", name) for name in GELU_FORMS]


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("operation, form", FORMS)
def test_generation_with_every_form_gives_the_plain_paths_tokens(operation, form, use_cache):
    """Sampled with a fixed seed in float32: the same tokens with each form forced as with autotune off
    (every operation on its plain form). And with autotune choosing, too."""
    lm = wide_lm()
    text, mask = lm.encode_text(torch.tensor([[2, 3, 4]]), torch.ones(1, 3, dtype=torch.bool))

    def run():
        return generate_codes(lm, text, mask, None, n_frames=12, cfg_coef=3.0, top_k=50, use_cache=use_cache,
                              generator=torch.Generator().manual_seed(3))
    autotune.ENABLED = False
    try:
        plain = run()
    finally:
        autotune.ENABLED = True
    autotune.FORCED[operation] = form
    assert torch.equal(run(), plain)
    autotune.FORCED.clear()
    assert torch.equal(run(), plain) and autotune.decisions()  # measured, chosen: still the same tokens


def test_in_bfloat16_every_form_is_as_close_to_float32_as_the_plain_form():
    """In bfloat16 each form rounds differently (another order of sums), so the sampled tokens may part;
    what must hold is the maths: teacher-forced log-probabilities of every forced form as close to the
    float32 model's as the plain bfloat16 path's are (within a factor 2: two roundings of one size)."""
    reference = wide_lm()
    lm = wide_lm(torch.bfloat16)
    codes = torch.randint(0, 256, (2, 4, 10), generator=torch.Generator().manual_seed(0))
    ids, mask = torch.tensor([[2, 3, 4], [5, 6, 0]]), torch.tensor([[True, True, True], [True, True, False]])

    def log_probs(model):
        text, text_mask = model.encode_text(ids, mask)
        with torch.inference_mode():
            return model.compute_loss(codes, text, text_mask, None)[1].float()  # (K,) per-codebook NLL
    expected = log_probs(reference)
    autotune.ENABLED = False
    try:
        plain_error = (log_probs(lm) - expected).abs().max()
    finally:
        autotune.ENABLED = True
    for operation, form in FORMS + [("attention", name) for name in HALF_ATTENTION_FORMS]:
        autotune.FORCED.clear()
        autotune.FORCED[operation] = form
        error = (log_probs(lm) - expected).abs().max()
        assert error <= 2 * plain_error + 1e-3, (operation, form, float(error), float(plain_error))


@pytest.mark.parametrize("form", list(HALF_ATTENTION_FORMS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_both_forms_of_half_precision_attention_give_its_value(dtype, form):
    q, k, v = (torch.randn(2, 4, n, 16) for n in (1, 9, 9))
    mask = torch.rand(2, 1, 1, 9) > 0.3
    mask[1] = False  # a row with no key at all: exactly zero
    autotune.FORCED["attention"] = form
    out = attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    assert out.dtype == dtype and (out[1] == 0).all()
    expected = attention(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), mask)
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)


def test_half_precision_attention_in_float32_runs_the_kernel_in_float32(monkeypatch):
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(transformer.F, "scaled_dot_product_attention",
                        lambda *args, **kwargs: seen.append(args[0].dtype) or sdpa(*args, **kwargs))
    q = torch.randn(1, 2, 1, 8, dtype=torch.bfloat16)
    for form, dtype in (("in float32", torch.float32), ("in its dtype", torch.bfloat16)):
        autotune.FORCED["attention"] = form
        seen.clear()
        attention(q, q, q)
        assert seen == [dtype]


def plain_seanet(monkeypatch):
    """Swap encodec.py's allocation-saving forms for their plain counterparts: every ELU makes a new
    tensor, the residual sum is `shortcut(x) + block(x)`, the transposed conv is nn.ConvTranspose1d's
    own call, and a 1x1 conv's zero padding goes through F.pad."""
    def block_forward(self, x):
        return self.shortcut(x) + self.block(x)

    def transposed_forward(self, x):
        y, right = self.conv(x), self.trim // 2
        return y[..., self.trim - right:y.shape[-1] - right]
    monkeypatch.setattr(encodec.SEANetResidualBlock, "forward", block_forward)
    monkeypatch.setattr(encodec.TrimmedConvTranspose1d, "forward", transposed_forward)
    monkeypatch.setattr(nn.ELU, "forward", lambda self, x: F.elu(x, self.alpha))
    pad1d = encodec.pad1d
    monkeypatch.setattr(encodec, "pad1d", lambda x, left, right, mode: F.pad(x, (0, 0), mode) if left == right == 0
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


def test_the_stacked_heads_of_decoding_give_the_k_heads_logits_and_follow_the_weights():
    """LMModel.apply_heads: with autograd off one product with the K heads' weights stacked, the same
    logits as the K products; the stacked matrix is rebuilt after an in-place update and a dtype cast."""
    lm = wide_lm()
    h = torch.randn(2, 3, 1024)
    training_form = lm.apply_heads(h)  # autograd on: the K products as written
    with torch.no_grad():
        decoding_form = lm.apply_heads(h)
        torch.testing.assert_close(decoding_form, training_form, atol=1e-5, rtol=1e-5)
        lm.heads[2].weight.mul_(-1)  # an optimizer's in-place step
        torch.testing.assert_close(lm.apply_heads(h)[:, 2], -training_form[:, 2], atol=1e-5, rtol=1e-5)
        lm.to(torch.bfloat16)
        assert lm.apply_heads(h.bfloat16()).dtype == torch.bfloat16
