"""rvq.py: k-means, EMA updates, dead-code revival, straight-through estimator, commitment, dropout."""
import math

import pytest
import torch

import rvq


def test_kmeans_finds_two_obvious_clusters():
    # Two tight groups around (0, 0) and (10, 10): the centroids must be the group means.
    x = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.2], [10.0, 10.0], [10.2, 10.0], [10.0, 10.4]])
    centroids, counts = rvq.kmeans(x, 2, generator=torch.Generator().manual_seed(0))
    order = centroids[:, 0].argsort()
    assert torch.allclose(centroids[order], torch.tensor([[0.2 / 3, 0.2 / 3], [10.2 / 3 + 20 / 3, 30.4 / 3]]),
                          atol=1e-5)
    assert counts[order].tolist() == [3.0, 3.0]


def test_ema_update_matches_hand_computation():
    vq = rvq.VectorQuantizer(dim=1, codebook_size=2, decay=0.5, epsilon=0.0)
    vq.cluster_size.copy_(torch.tensor([2.0, 2.0]))
    vq.embed_sum.copy_(torch.tensor([[2.0], [6.0]]))  # entries at 1 and 3
    x = torch.tensor([[0.0], [1.0], [5.0]])
    indices = torch.tensor([0, 0, 1])
    vq.ema_update(x, indices)
    # N = 0.5·[2, 2] + 0.5·[2, 1] = [2, 1.5];  m = 0.5·[2, 6] + 0.5·[1, 5] = [1.5, 5.5];  e = m / N
    assert torch.allclose(vq.cluster_size, torch.tensor([2.0, 1.5]))
    assert torch.allclose(vq.embed_sum, torch.tensor([[1.5], [5.5]]))
    assert torch.allclose(vq.codebook, torch.tensor([[0.75], [5.5 / 1.5]]))


def test_assignment_is_nearest_neighbour():
    vq = rvq.VectorQuantizer(dim=2, codebook_size=3)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]]))
    assert vq.assign(torch.tensor([[0.1, 0.1], [0.9, -0.2], [0.0, 4.0]])).tolist() == [0, 1, 2]


def test_dead_code_revival_changes_the_code_and_its_statistics_and_survives_the_next_update():
    torch.manual_seed(0)
    vq = rvq.VectorQuantizer(dim=2, codebook_size=2, decay=0.9, dead_threshold=1.0)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0]]))
    vq.cluster_size.copy_(torch.tensor([5.0, 0.01]))  # entry 1 is dead
    vq.embed_sum.copy_(vq.codebook * vq.cluster_size[:, None])
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    assert vq.revive_dead_codes(x) == 1
    assert torch.equal(vq.codebook[1], torch.tensor([1.0, 2.0]))     # replaced by a live input
    assert vq.cluster_size[1] == 1.0                                  # statistics reset with it
    assert torch.equal(vq.embed_sum[1], torch.tensor([1.0, 2.0]))
    # The reference bug: the next EMA update recomputes e = m / N from the old statistics and undoes the
    # revival. With the statistics reset, an update that assigns nothing to entry 1 keeps it in place.
    vq.ema_update(x, torch.tensor([0, 0, 0]))
    assert torch.allclose(vq.codebook[1], torch.tensor([1.0, 2.0]), atol=1e-4)


def test_training_forward_revives_codes_nobody_uses():
    torch.manual_seed(0)
    vq = rvq.VectorQuantizer(dim=2, codebook_size=4, dead_threshold=0.5)
    vq.train()
    vq(torch.randn(2, 2, 8))  # k-means initialisation
    vq.codebook[3] = 1e6      # move one entry far away: nobody will pick it
    vq.cluster_size[3] = 0.0
    vq(torch.randn(2, 2, 8))
    assert vq.codebook[3].abs().max() < 100


def test_straight_through_gradient_is_identity():
    torch.manual_seed(0)
    quantizer = rvq.ResidualVectorQuantizer(dim=3, n_q=2, codebook_size=4)
    quantizer.train()
    quantizer(torch.randn(2, 3, 5))  # initialise the codebooks
    quantizer.eval()
    z = torch.randn(2, 3, 5, requires_grad=True)
    weights = torch.randn(2, 3, 5)
    z_hat, codes, commitment, k = quantizer(z)
    (z_hat * weights).sum().backward()
    assert torch.allclose(z.grad, weights)


def test_commitment_loss_reaches_the_encoder_through_every_level():
    # d/dz of mean_k ||r_k - q_k||² with r_k = z - Σ_{j<k} q_j must contain every level's term; the
    # original EnCodec residual (from the straight-through output) kept only k = 1.
    torch.manual_seed(0)
    K = 3
    quantizer = rvq.ResidualVectorQuantizer(dim=4, n_q=K, codebook_size=8)
    quantizer.train()
    quantizer(torch.randn(2, 4, 16))
    quantizer.eval()
    z = torch.randn(2, 4, 6, requires_grad=True)
    _, codes, commitment, _ = quantizer(z)
    commitment.backward()
    expected, residual = torch.zeros_like(z), z.detach()
    for k, layer in enumerate(quantizer.layers):
        q = layer.decode(codes[:, k])
        expected += 2 * (residual - q) / residual.numel() / K
        residual = residual - q
    assert torch.allclose(z.grad, expected, atol=1e-6)
    first_level_only = 2 * (z.detach() - quantizer.layers[0].decode(codes[:, 0])) / z.numel() / K
    assert not torch.allclose(z.grad, first_level_only, atol=1e-4)


def test_quantizer_dropout_changes_the_number_of_active_codebooks():
    torch.manual_seed(0)
    quantizer = rvq.ResidualVectorQuantizer(dim=2, n_q=4, codebook_size=4, quantizer_dropout=1.0)
    quantizer.train()
    used = {quantizer(torch.randn(1, 2, 8))[3] for _ in range(40)}
    assert len(used) > 1 and used <= {1, 2, 3, 4}
    quantizer.eval()  # no dropout at inference
    assert {quantizer(torch.randn(1, 2, 8))[3] for _ in range(5)} == {4}


def test_encode_decode_matches_forward_and_more_codebooks_fit_better():
    torch.manual_seed(0)
    quantizer = rvq.ResidualVectorQuantizer(dim=4, n_q=4, codebook_size=16)
    quantizer.train()
    for _ in range(20):
        quantizer(torch.randn(8, 4, 32))
    quantizer.eval()
    z = torch.randn(8, 4, 32)
    z_hat, codes, _, _ = quantizer(z)
    assert codes.shape == (8, 4, 32)
    assert torch.equal(quantizer.encode(z), codes)
    assert torch.allclose(quantizer.decode(codes), z_hat, atol=1e-6)
    errors = [(z - quantizer.decode(codes[:, :k])).pow(2).mean() for k in range(1, 5)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))


def test_bitrate_and_perplexity():
    quantizer = rvq.ResidualVectorQuantizer(dim=2, n_q=4, codebook_size=2048)
    assert quantizer.bitrate(50) == 4 * 11 * 50  # the paper's 2.2 kbps
    uniform = torch.arange(16).repeat(3).view(1, 1, 48)
    constant = torch.zeros(1, 1, 48, dtype=torch.long)
    assert rvq.perplexity(uniform, 16)[0] == pytest.approx(16)
    assert rvq.perplexity(constant, 16)[0] == pytest.approx(1)
    assert math.isclose(rvq.perplexity(torch.cat([uniform, constant], 1), 16)[1], 1)
