"""The evaluation metrics (evaluate.py) on hand-made inputs with known answers, and the ablation machinery."""
import math
from collections import Counter
from dataclasses import replace

import pytest
import torch

import audio
import data
import toy
import evaluate
import metrics
import probe
import train
import rvq


def exact_gaussian_sample(mean, cov, n=200, seed=0):
    """n points whose *empirical* mean and (unbiased) covariance are exactly `mean` and `cov`."""
    d = mean.numel()
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # whitened: cov(z) = I
    return mean.double() + z @ torch.linalg.cholesky(cov.double()).T


# ---- Fréchet distance -------------------------------------------------------------------------------
def test_frechet_of_a_set_with_itself_is_zero():
    x = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    assert abs(metrics.frechet_distance(x, x)) < 1e-8


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    # Σ diagonal: d² = ||μ1 − μ2||² + Σ_i (√a_i − √b_i)²
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    x = exact_gaussian_sample(mu1, torch.diag(a), seed=1)
    y = exact_gaussian_sample(mu2, torch.diag(b), seed=2)
    expected = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, abs=1e-6)


def test_frechet_matches_closed_form_for_non_commuting_covariances():
    # Σ1 = I: Tr((Σ1 Σ2)^½) = Σ √λ(Σ2), whatever Σ2's eigenvectors; here λ(Σ2) = (4, 1/4).
    angle = torch.tensor(0.6)
    rotation = torch.tensor([[angle.cos(), -angle.sin()], [angle.sin(), angle.cos()]])
    cov2 = rotation @ torch.diag(torch.tensor([4.0, 0.25])) @ rotation.T
    x = exact_gaussian_sample(torch.zeros(2), torch.eye(2), seed=3)
    y = exact_gaussian_sample(torch.zeros(2), cov2, seed=4)
    expected = 2 + 4.25 - 2 * (2 + 0.5)
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, abs=1e-6)


# ---- KL ---------------------------------------------------------------------------------------------
def test_kl_hand_computed_and_zero_for_identical():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    q = torch.tensor([[0.9, 0.1], [1.0, 0.0]])
    # row 1: 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5 ln(25/9); row 2: 0. Mean over rows.
    assert metrics.kl_divergence(p, q) == pytest.approx(0.25 * math.log(25 / 9), abs=1e-4)
    assert metrics.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-9)
    assert metrics.kl_divergence(q, p) > 0  # asymmetric, and positive when they differ


# ---- codec metrics ----------------------------------------------------------------------------------
def test_si_snr_hand_computed():
    reference = torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 1, 4)
    noise = torch.tensor([1.0, 1.0, -1.0, -1.0]).view(1, 1, 4)  # zero mean, orthogonal to the reference
    assert float(metrics.si_snr(reference, reference + noise)) == pytest.approx(0.0, abs=1e-4)
    assert float(metrics.si_snr(reference, reference + 0.5 * noise)) == pytest.approx(10 * math.log10(4), abs=1e-4)
    # scale invariance: a louder copy is a perfect reconstruction
    assert float(metrics.si_snr(reference, 3 * reference)) > 60


def test_codebook_perplexity_counts_used_entries():
    codes = torch.tensor([[[0, 1, 2, 3] * 4, [5] * 16]])  # (1, K=2, T=16)
    assert rvq.perplexity(codes, 8) == pytest.approx([4.0, 1.0])


def test_mel_filterbank_triangles_sum_to_one_between_centres():
    bank = audio.mel_filterbank(1024, 40, 16000)  # (40, 513)
    assert bank.shape == (40, 513)
    covered = (bank > 0).sum(0) == 2  # bins under two overlapping triangles
    assert torch.allclose(bank.sum(0)[covered], torch.ones(int(covered.sum())), atol=1e-5)


# ---- chroma cosine ----------------------------------------------------------------------------------
def tune(midi_notes, note_seconds=0.5, sample_rate=16000):
    """Sine tones one after the other: (1, 1, N)."""
    n = int(note_seconds * sample_rate)
    t = torch.arange(n) / sample_rate
    tones = [torch.sin(2 * math.pi * 440 * 2 ** ((m - 69) / 12) * t) for m in midi_notes]
    return 0.5 * torch.cat(tones).view(1, 1, -1)


C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


def test_chroma_cosine_of_a_scale_with_itself_is_one():
    scale = tune(C_MAJOR)
    assert metrics.chroma_cosine(scale, scale, 16000) == pytest.approx(1.0, abs=1e-6)


def test_chroma_cosine_against_transposed_melodies():
    scale = tune(C_MAJOR)
    # A tritone up: no frame can share a pitch class with the original (neighbours differ by <= 2).
    tritone = tune([m + 6 for m in C_MAJOR])
    assert metrics.chroma_cosine(scale, tritone, 16000) < 0.05
    # Second half transposed: about half of the frames agree.
    half = tune(C_MAJOR[:4] + [m + 6 for m in C_MAJOR[4:]])
    assert 0.35 < metrics.chroma_cosine(scale, half, 16000) < 0.65


def test_beat_strength_tells_a_steady_beat_from_random_onsets():
    """Known answer: decaying 880 Hz pings every 0.5 s (120 BPM, a lag of 25 frames) vs the same number of
    pings at random times; the beat lag is found and the score drops when the onsets lose their period."""
    n, rate = 4 * 16000, 16000
    t = torch.arange(int(0.2 * rate)) / rate
    ping = torch.sin(2 * torch.pi * 880 * t) * torch.exp(-t / 0.05)
    def pings(onsets):
        wav = torch.zeros(n + len(t))
        for onset in onsets:
            wav[int(onset * rate):int(onset * rate) + len(t)] += ping
        return wav[:n]
    steady = pings([0.5 * i for i in range(8)])
    scattered = pings(sorted(torch.rand(8, generator=torch.Generator().manual_seed(0)).mul(3.8).tolist()))
    wav = torch.stack([steady, scattered])[:, None]  # (2, 1, N)
    log_mel = torch.log(audio.mel_filterbank(1024, 40, rate)
                        @ torch.stft(wav[:, 0], 1024, 320, window=torch.hann_window(1024), return_complex=True).abs() ** 2 + 1e-4)
    assert int(probe.onset_autocorrelation(log_mel)[0, 14:50].argmax()) + 15 == 25  # lag 25 frames = 0.5 s
    strength = probe.beat_strength(wav)
    assert strength[0] > 0.5 and strength[1] < strength[0] - 0.2, strength
    assert torch.allclose(probe.beat_strength(0.1 * wav), strength, atol=1e-3)  # loudness-invariant


# ---- the probe --------------------------------------------------------------------------------------
def test_probe_features_are_loudness_invariant():
    wav = tune(C_MAJOR)
    features = probe.probe_features(wav)
    assert features.shape == (1, 122)
    assert torch.allclose(features, probe.probe_features(0.25 * wav), atol=1e-3)


def test_probe_separates_two_instruments(tmp_path):
    toy.make_toy_dataset(tmp_path, n=40, seed=3)  # 11 test clips: one miss still passes the 0.9 bar
    clips = data.load_clips(tmp_path, 16000)
    (first, _), (second, _) = Counter(c.attributes["instrument"] for c in clips).most_common(2)
    pair = [c for c in clips if c.attributes["instrument"] in (first, second)]
    train, test = pair[0::2], pair[1::2]  # interleaved halves: both instruments on both sides
    model, report = probe.train_probe(train, test, steps=200, n_augment=1,
                                      attributes={"instrument": (first, second)})
    assert len(test) >= 4
    assert report["per_attribute"]["instrument"] >= 0.9


def test_probe_round_trips_through_a_weights_only_file(tmp_path):
    model = probe.AttributeProbe(122)
    probe.save_probe(tmp_path / "probe.pt", model, dict(accuracy=1.0))
    ckpt = torch.load(tmp_path / "probe.pt", weights_only=True)
    loaded = probe.AttributeProbe(ckpt["n_features"], ckpt["hidden"])
    loaded.load_state_dict(ckpt["model"])
    features = torch.randn(3, 122)
    model.eval(), loaded.eval()
    assert torch.equal(model.embed(features), loaded.embed(features))


# ---- reporting --------------------------------------------------------------------------------------
def test_listening_page_has_one_row_per_description_and_the_metrics(tmp_path):
    rows = [(f"a <sad> tune {i}", [(f"take {j}", f"samples/item{i}_{j}.wav", "same audio as take 0" if j == 2 else "")
                                   for j in range(3)]) for i in range(2)]
    markdown = "Evaluated on 2.\n\n| audio | adherence |\n| --- | --- |\n| text, cfg_coef 2 | 0.808 |\n"
    text = evaluate.write_listening_page(tmp_path, rows, markdown).read_text()
    assert text.count("<audio") == 6 and text.count("<tr><td>a &lt;sad&gt; tune") == 2  # escaped, one row each
    assert "src='samples/item1_2.wav'" in text and str(tmp_path) not in text  # relative paths
    assert "preload='metadata'" in text and "name='viewport'" in text and "same audio as take 0" in text
    assert "<td>0.808</td>" in text and "<th>take 2</th>" in text  # the metrics table and the column heads


def test_markdown_tables_list_every_row():
    row = dict(adherence=0.5, kl=0.1, frechet=2.0, beat=0.25)
    old_row = dict(adherence=0.5, kl=0.1, frechet=2.0)  # a results.json from before the beat column
    results = {"probe.accuracy": 0.97, "table1": {"unconditional": old_row, "text, cfg_coef 3": row},
               "table3": {name: dict(valid_nll_per_codebook=[1.0, 2.0], adherence=0.5, frechet=1.0,
                                     decoding_steps_10s=250, generation_seconds=1.0) for name in ("delay", "flatten")}}
    markdown = evaluate.results_markdown(results)
    for name in ("unconditional", "text, cfg_coef 3", "delay", "flatten"):
        assert f"| {name} |" in markdown
    assert "| text, cfg_coef 3 | 0.500 | 0.100 | 2.000 | 0.25 |" in markdown
    assert "| unconditional | 0.500 | 0.100 | 2.000 | – |" in markdown


# ---- end to end on a micro budget (needs train.py, encodec.py, conditioners.py) ----------------------
@pytest.mark.slow
def test_evaluation_and_pattern_ablation_run_end_to_end(tmp_path):
    data_dir, run = tmp_path / "toy", tmp_path / "run"
    toy.make_toy_dataset(data_dir, n=12, seed=0)
    train.main(["--stage", "codec", "--data", str(data_dir), "--out", str(run), "--max-steps", "2",
                "--batch-size", "2", "--device", "cpu"])
    micro = replace(train.TINY, lm_batch=2, lm_warmup=1,
                    lm=replace(train.TINY_LM, dim=32, n_layers=1, n_heads=2, ffn_dim=64, text_dim=16, text_layers=1, text_heads=2))
    rows = evaluate.ablate_patterns(run, data_dir, steps=2, n=2, preset=micro, batch_size=2)
    assert set(rows) == {"parallel", "delay", "partial-delay", "flatten", "partial-flatten", "vall-e"}
    steps = {name: row["decoding_steps_10s"] for name, row in rows.items()}
    assert steps["flatten"] > 3 * steps["delay"]  # K = 4 tokens per frame, one per step
    for row in rows.values():
        assert len(row["valid_nll_per_codebook"]) == 4 and 0 <= row["adherence"] <= 1
    # Tables 1-2 on the delay model of the ablation (its directory is a complete run).
    json_path = tmp_path / "out" / "results.json"
    evaluate.main(["--run", str(run / "ablation" / "delay"), "--data", str(data_dir), "--n", "2",
                   "--batch-size", "2", "--json", str(json_path)])
    import json
    results = json.loads(json_path.read_text())
    for key in ("codec.mel_distance", "codec.si_snr_db", "codec.bitrate_kbps", "probe.accuracy", "text.adherence",
                "text.kl", "text.frechet", "melody.chroma_cosine", "melody.chroma_cosine_text_only",
                "generation.real_time_factor"):
        assert isinstance(results[key], float), key
    assert len(results["codec.perplexity"]) == 4
    assert (tmp_path / "out" / "results.md").exists()
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.count("<audio") == 2 * 8  # 2 items x (real, stem, codec, 5 generated conditions)
