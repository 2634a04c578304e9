"""The paper's objective metrics (§4.2) and EnCodec's codec metrics, each written once.

    Fréchet distance   FAD's formula, on any embedding (paper: VGGish; ours: probe.py's hidden layer)
    KL divergence      between label distributions (paper: PaSST's; ours: the probe's)
    chroma cosine      the melody metric: argmax chroma of reference vs generated, per frame
    mel distance, SI-SNR, bitrate, perplexity   the codec's reconstruction and codebook usage

Shape letters: B batch, N samples, H embedding width, F chroma frames, K codebooks, T frames.
Data flow: train.py (held-out codec metrics during training) and evaluate.py (Tables 1-3) call these.
"""
import torch
import torch.nn.functional as F

from audio import mel_filterbank
from conditioners import ChromaExtractor
from rvq import perplexity


def frechet_distance(x, y):
    """Fréchet distance between Gaussians fitted to two sets of embeddings (paper: FAD, on VGGish).

        d² = ||μ_x − μ_y||² + Tr(Σ_x + Σ_y − 2 (Σ_x Σ_y)^{1/2})

    Tr((Σ_x Σ_y)^{1/2}) = Tr((A Σ_y A)^{1/2}) with A = Σ_x^{1/2}: the second matrix is symmetric PSD,
    so both square roots come from an eigendecomposition (eigh), in float64.
    Args: x (N, H), y (M, H). Returns a float >= 0.
    """
    x, y = x.double(), y.double()
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x, y: expected (N, H) and (M, H), got {tuple(x.shape)} and {tuple(y.shape)}")
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.T), torch.cov(y.T)  # (H, H) each, unbiased as in FAD
    return float(((mu_x - mu_y) ** 2).sum() + cov_x.trace() + cov_y.trace() - 2 * trace_sqrt_product(cov_x, cov_y))


def sqrtm_psd(matrix):
    """Square root of a symmetric PSD matrix: V diag(sqrt(λ)) Vᵀ (tiny negative λ from rounding → 0)."""
    eigenvalues, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def trace_sqrt_product(cov_x, cov_y):
    root_x = sqrtm_psd(cov_x)
    return torch.linalg.eigvalsh(root_x @ cov_y @ root_x).clamp(min=0).sqrt().sum()


def kl_divergence(p, q, eps=1e-6):
    """KL(p ‖ q) = Σ_c p_c log(p_c / q_c) per row, averaged over rows (paper: PaSST labels of the
    reference vs of the generated music). p, q: (B, n_classes) probabilities. Returns a float."""
    if p.shape != q.shape:
        raise ValueError(f"p, q: same shape expected, got {tuple(p.shape)} and {tuple(q.shape)}")
    p, q = p.double().clamp(min=eps), q.double().clamp(min=eps)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    return float((p * (p.log() - q.log())).sum(-1).mean())


def chroma_cosine(reference, generated, sample_rate):
    """The paper's melody metric (§4.2): cosine similarity between the quantized (argmax one-hot)
    chroma of the reference melody and of the generated audio, per frame, averaged over frames (and
    over the batch). For one-hot frames the cosine is 1 where the pitch classes agree, else 0; silent
    frames are gated to all-zero chroma (gate_silence=True), so they score 0 instead of matching as C.
    Args: reference, generated (B, 1, N) at sample_rate. Returns a float in [0, 1]."""
    extractor = ChromaExtractor(sample_rate, gate_silence=True)
    ref, gen = extractor(reference.float()), extractor(generated.float())  # (B, F, 12) each
    n_frames = min(ref.shape[1], gen.shape[1])
    ref, gen = ref[:, :n_frames], gen[:, :n_frames]
    return float(F.cosine_similarity(ref, gen, dim=-1, eps=1e-8).mean())  # (B, F) -> mean


def si_snr(reference, estimate, eps=1e-8):
    """Scale-invariant SNR in dB (Le Roux et al., 2019), per clip: project the estimate on the
    reference, s = <ŝ, r> r / ||r||², then 10 log10(||s||² / ||ŝ − s||²). (B, 1, N) each -> (B,)."""
    r = reference - reference.mean(-1, keepdim=True)
    e = estimate - estimate.mean(-1, keepdim=True)
    target = (e * r).sum(-1, keepdim=True) / (r.pow(2).sum(-1, keepdim=True) + eps) * r
    return 10 * torch.log10(target.pow(2).sum(-1) / ((e - target).pow(2).sum(-1) + eps) + eps).flatten()


def mel_distance(reference, estimate, sample_rate):
    """Mean L1 distance between log-mel spectrograms (64 bands, 1024-point STFT, hop 256); lower is
    better. (B, 1, N) each -> float."""
    bank = mel_filterbank(1024, 64, sample_rate)
    def log_mel(wav):
        spec = torch.stft(wav[:, 0], 1024, 256, window=torch.hann_window(1024), return_complex=True).abs() ** 2
        return torch.log10(bank @ spec + 1e-5)  # (B, 64, T)
    return float((log_mel(reference) - log_mel(estimate)).abs().mean())


@torch.no_grad()
def codec_metrics(codec, wav, batch_size=16, per_n_q=False):
    """Held-out clips through a codec (EnCodec's metrics, and the paper's chroma for the melody).

    Args:
        codec: encodec.EncodecModel; wav: (B, 1, N) clips at codec.sample_rate.
        per_n_q: also decode with only the first k codebooks, k = 1..K (each added one should help).
    Returns:
        (metrics dict: mel_distance, si_snr_db, chroma_cosine, bitrate_kbps, perplexity (list of K)
        [, mel_distance_per_n_q], reconstruction (B, 1, N)).
    """
    was_training = codec.training
    codec.eval()
    device = next(codec.parameters()).device
    codes = torch.cat([codec.encode(wav[i:i + batch_size].to(device)) for i in range(0, len(wav), batch_size)])  # (B, K, T)
    decode = lambda k: torch.cat([codec.decode(codes[i:i + batch_size, :k]).cpu()
                                  for i in range(0, len(codes), batch_size)])[..., :wav.shape[-1]]  # (B, 1, T·hop) -> (B, 1, N)
    result = dict(perplexity=perplexity(codes, codec.codebook_size), bitrate_kbps=codec.bitrate / 1000)
    if per_n_q:
        result["mel_distance_per_n_q"] = [mel_distance(wav, decode(k), codec.sample_rate) for k in range(1, codec.n_q)]
    recon = decode(codec.n_q)
    result["mel_distance"] = mel_distance(wav, recon, codec.sample_rate)
    if per_n_q:
        result["mel_distance_per_n_q"].append(result["mel_distance"])
    result["si_snr_db"] = float(si_snr(wav, recon).mean())
    # Does the melody survive the codec? (chance ≈ 0.08 for one-hot chroma of 12 classes)
    result["chroma_cosine"] = chroma_cosine(wav, recon, codec.sample_rate)
    codec.train(was_training)
    return result, recon
