"""Generator shapes, superposition, DM stacking and gradients (method doc §3)."""

import pytest
import torch

from qimera_core.generator import Generator, sample_latents


def make(**kw):
    args = dict(num_classes=5, latent_dim=16, img_size=8, channels=3, dm_layers=1)
    args.update(kw)
    return Generator(**args)


def latents(k, mode="batch", p=1.0, batch=6, d=16, sigma=1.0):
    return sample_latents(batch, 5, d, mix_prob=p, mix_classes=k, mix_mode=mode,
                          rng=torch.Generator().manual_seed(0),
                          coin=torch.Generator().manual_seed(1), device=torch.device("cpu"),
                          noise_sigma=sigma)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("dm_layers", [0, 1, 2])
@pytest.mark.parametrize("conditional_bn", [False, True])
def test_shapes_and_every_parameter_gets_gradient(k, dm_layers, conditional_bn):
    g = make(dm_layers=dm_layers, conditional_bn=conditional_bn)
    lat = latents(k)
    x = g.generate(lat)
    assert x.shape == (6, 3, 8, 8) and torch.isfinite(x).all()
    x.square().mean().backward()
    for name, p in g.named_parameters():
        if ".gamma." in name or ".beta." in name:
            continue   # embedding tables: only rows of sampled classes get gradient
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_superposed_targets_are_lambda_weighted_and_sum_to_one():
    lat = latents(4)
    assert lat.labels.shape == (6, 4) and lat.noise.shape == (6, 4, 16)
    torch.testing.assert_close(lat.weights.sum(1), torch.ones(6))
    assert (lat.weights > 0).all()
    torch.testing.assert_close(lat.targets.sum(1), torch.ones(6))
    manual = torch.zeros(6, 5)
    for b in range(6):
        for k in range(4):
            manual[b, lat.labels[b, k]] += lat.weights[b, k]
    torch.testing.assert_close(lat.targets, manual)


def test_p_zero_never_superposes_and_p_one_always():
    assert latents(3, p=0.0).labels.shape[1] == 1
    assert latents(3, p=1.0).labels.shape[1] == 3


def test_per_batch_probability_is_p():
    coin = torch.Generator().manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    ks = [sample_latents(2, 5, 4, mix_prob=0.4, mix_classes=2, mix_mode="batch", rng=rng,
                         coin=coin, device=torch.device("cpu")).labels.shape[1]
          for _ in range(2000)]
    assert abs(sum(k == 2 for k in ks) / 2000 - 0.4) < 0.04


def test_per_sample_mode_mixes_within_a_batch():
    lat = latents(3, mode="sample", p=0.5, batch=64)
    assert lat.mixed is not None and 0 < lat.mixed.sum() < 64
    plain = ~lat.mixed
    assert torch.equal(lat.weights[plain, 0], torch.ones(int(plain.sum())))
    x = make().generate(lat)
    assert x.shape == (64, 3, 8, 8) and torch.isfinite(x).all()


def test_plain_latent_is_standardized_per_sample_and_superposed_per_slot():
    g = make(dm_layers=0)
    lat = latents(1, sigma=0.5)
    assert not lat.mixed.any()
    v = g.embed(lat.labels, lat.weights, lat.noise, lat.mixed)
    torch.testing.assert_close(v.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(v.var(1, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    lat = latents(2, sigma=0.5)
    assert lat.mixed.all()
    u = g.embeddings[lat.labels] + lat.noise                            # (B, K, D)
    mu = u.mean((0, 2), keepdim=True)
    var = u.var((0, 2), unbiased=False, keepdim=True)
    expect = ((u - mu) / torch.sqrt(var + 1e-5) * lat.weights[..., None]).sum(1)
    torch.testing.assert_close(g.embed(lat.labels, lat.weights, lat.noise, lat.mixed), expect)


def test_per_sample_mode_standardizes_the_superposed_samples_among_themselves():
    g = make(dm_layers=0)
    lat = latents(3, mode="sample", p=0.5, batch=32)
    mixed = lat.mixed
    u = g.embeddings[lat.labels] + lat.noise
    sub = u[mixed]
    slot = (sub - sub.mean((0, 2), keepdim=True)) / torch.sqrt(
        sub.var((0, 2), unbiased=False, keepdim=True) + 1e-5)
    own = u[~mixed, :1]
    own = (own - own.mean(2, keepdim=True)) / torch.sqrt(own.var(2, unbiased=False,
                                                                 keepdim=True) + 1e-5)
    v = g.embed(lat.labels, lat.weights, lat.noise, mixed)
    torch.testing.assert_close(v[mixed], (slot * lat.weights[mixed][..., None]).sum(1))
    torch.testing.assert_close(v[~mixed], own[:, 0])


def test_sigma_scales_the_noise_and_changes_the_latent():
    one, quarter = latents(1), latents(1, sigma=0.25)
    assert torch.equal(quarter.labels, one.labels)
    torch.testing.assert_close(quarter.noise, 0.25 * one.noise, rtol=0, atol=0)
    g = make(dm_layers=0)
    a = g.embed(one.labels, one.weights, one.noise, one.mixed)
    b = g.embed(quarter.labels, quarter.weights, quarter.noise, quarter.mixed)
    assert (a - b).abs().max() > 0.1
    # sigma = 0: the latent is the class embedding alone, whatever the noise
    zero = latents(1, sigma=0.0)
    assert torch.equal(zero.labels, one.labels) and not zero.noise.any()


def test_frozen_embeddings_are_not_parameters():
    emb = torch.randn(5, 16)
    g = make(embeddings=emb, freeze_embeddings=True)
    assert "embeddings" not in dict(g.named_parameters())
    assert torch.equal(g.embeddings, emb) and "embeddings" in g.state_dict()
    assert "embeddings" in dict(make(embeddings=emb).named_parameters())


def test_dm_stacks_layers_with_activation_between():
    g = make(dm_layers=3, dm_width=7, dm_activation="leaky_relu")
    lin = [m for m in g.dm if isinstance(m, torch.nn.Linear)]
    assert len(lin) == 3 and lin[0].in_features == 16 and lin[-1].out_features == 7
    assert g.fc.in_features == 7
    assert len(g.dm) == 5          # linear, act, linear, act, linear


def test_cbn_mean_vs_sum():
    g_mean = make(conditional_bn=True, cbn_mix="mean")
    g_sum = make(conditional_bn=True, cbn_mix="sum")
    with torch.no_grad():
        for g in (g_mean, g_sum):
            g.bn0.gamma.weight.fill_(2.0)
    lat = latents(4)
    x = torch.randn(6, 128, 2, 2)
    ref = g_sum.bn0.bn(x)
    torch.testing.assert_close(g_sum.bn0(x, lat.labels, lat.weights), ref * 2.0)
    torch.testing.assert_close(g_mean.bn0(x, lat.labels, lat.weights), ref * 2.0 / 4)


def test_multiplicative_gdfq_input():
    g = make(dm_layers=0, latent_input="multiplicative")
    lat = latents(1)
    torch.testing.assert_close(g.embed(lat.labels, lat.weights, lat.noise, lat.mixed),
                               g.embeddings[lat.labels[:, 0]] * lat.noise[:, 0])


def test_size_not_a_multiple_of_4_is_rendered_larger_and_centre_cropped():
    """InceptionV3's 299 px: the trunk renders 4 * ceil(size / 4) and crops to size. (10 px,
    rendered at 12, stands in for 299 at 300 to keep the test small.)"""
    g = make(img_size=10)
    assert g.h0 == 3
    x = g.generate(latents(1))
    assert x.shape == (6, 3, 10, 10) and torch.isfinite(x).all()
    assert make(img_size=8).h0 == 2                  # multiples of 4 are unchanged
