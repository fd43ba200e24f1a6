"""VAE, U-Net and schedulers: shapes, sizes, conditioning semantics, learnability, scheduler maths."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synthgen.model.schedulers import SAMPLERS, EpsScale, epsilon_scaling, make_scheduler
from synthgen.model.unet import UNet1D, UNetConfig
from synthgen.model.vae import VAE, VAEConfig, kl_divergence

TINY_VAE = VAEConfig(base_channels=8, channel_mult=(1, 1, 1, 1), n_res_blocks=1, norm_groups=4)


def tiny_unet_config(cond_dim: int = 16) -> UNetConfig:
    return UNetConfig(base_channels=16, channel_mult=(1, 2), attention_levels=(1,), heads=2, cond_dim=cond_dim,
                      token_dim=16, norm_groups=4)


TINY_UNET = tiny_unet_config()


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models: one thread is faster, and on a shared CPU extra intra-op threads stall (10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def unet_inputs(cfg: UNetConfig, b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(z_t=torch.randn(b, cfg.in_channels, 128, generator=g), t=torch.randint(0, 1000, (b,), generator=g),
                text=torch.randn(b, cfg.cond_dim, generator=g), text_present=torch.ones(b, dtype=torch.bool),
                patient=torch.randn(b, 3, generator=g), patient_present=torch.ones(b, 3, dtype=torch.bool))


def randomise_output(unet: UNet1D) -> UNet1D:
    """The output conv is zero-initialised (eps = 0 for any input); give it weights so inputs show."""
    torch.manual_seed(0)
    nn.init.normal_(unet.conv_out.weight, std=0.1)
    return unet.eval()


def test_small_presets_sizes_and_shapes() -> None:
    vae, unet = VAE(VAEConfig()), UNet1D(UNetConfig())
    assert 0.5e6 <= n_params(vae) <= 1.5e6
    assert 1.5e6 <= n_params(unet) <= 3e6
    x = torch.randn(2, 12, 1024)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (2, 4, 128)
    recon, mu2, _ = vae(x)
    assert recon.shape == x.shape and torch.equal(mu, mu2)
    assert vae.decode(mu).shape == (2, 12, 1024)
    eps = unet(**unet_inputs(UNetConfig(), b=2))
    assert eps.shape == (2, 4, 128)
    assert torch.count_nonzero(eps) == 0  # zero-initialised output conv


def test_paper_presets_are_larger() -> None:
    assert n_params(VAE(VAEConfig.paper())) > 3 * n_params(VAE(VAEConfig()))
    paper = UNetConfig.paper()
    assert len(paper.channel_mult) == 7 and paper.cond_dim == 1536
    assert n_params(UNet1D(paper)) > 5 * n_params(UNet1D(UNetConfig()))


def test_configs_accept_json_lists() -> None:
    assert VAEConfig(channel_mult=[1, 2, 4, 4]).channel_mult == (1, 2, 4, 4)
    assert UNetConfig(attention_levels=[1]).attention_levels == (1,)


def test_kl_divergence_known_values() -> None:
    zeros = torch.zeros(2, 4, 128)
    assert kl_divergence(zeros, zeros).item() == 0.0
    # one element with mu=1, logvar=0 contributes 0.5
    mu = zeros.clone()
    mu[:, 0, 0] = 1.0
    assert kl_divergence(mu, zeros).item() == pytest.approx(0.5)


def test_text_reaches_output_through_cross_attention() -> None:
    unet = randomise_output(UNet1D(TINY_UNET))
    inputs = unet_inputs(TINY_UNET)
    other = dict(inputs, text=torch.randn(inputs["text"].shape))
    with torch.no_grad():
        a, b = unet(**inputs), unet(**other)
    # every sample changes, and differently along the sequence (not a constant per-channel bias)
    diff = (a - b).abs()
    assert (diff.flatten(1).amax(1) > 1e-4).all()
    assert ((a - b).std(dim=2) > 1e-6).any()


@pytest.mark.parametrize("column", [0, 1, 2])
def test_missing_feature_uses_null_token(column: int) -> None:
    unet = randomise_output(UNet1D(TINY_UNET))
    inputs = unet_inputs(TINY_UNET)
    present = inputs["patient_present"].clone()
    present[:, column] = False
    changed = inputs["patient"].clone()
    changed[:, column] += 5.0
    no_text = dict(inputs, text_present=torch.zeros(3, dtype=torch.bool))
    with torch.no_grad():
        # the value of a missing feature is ignored, a present one is used
        assert torch.equal(unet(**dict(inputs, patient_present=present)),
                           unet(**dict(inputs, patient_present=present, patient=changed)))
        assert not torch.allclose(unet(**inputs), unet(**dict(inputs, patient=changed)))
        # the same for missing text
        assert torch.equal(unet(**no_text), unet(**dict(no_text, text=torch.randn(3, 16))))


def test_vae_learns() -> None:
    torch.manual_seed(0)
    vae = VAE(TINY_VAE)
    t = torch.linspace(0, 2.5, 256)  # any length divisible by 8 works; short keeps the test fast
    x = torch.stack([torch.sin(2 * math.pi * f * t)[None].repeat(12, 1) for f in (1.0, 1.2, 0.8, 1.5)])
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        recon, mu, logvar = vae(x)
        loss = nn.functional.mse_loss(recon, x) + 1e-4 * kl_divergence(mu, logvar)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_unet_learns() -> None:
    torch.manual_seed(0)
    unet = UNet1D(TINY_UNET)
    inputs = unet_inputs(TINY_UNET, b=4)
    target = torch.randn(inputs["z_t"].shape)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(unet(**inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_scheduler_names_and_schedule() -> None:
    assert SAMPLERS == ("ddpm", "ddim", "dpm++", "dpm++sde")
    with pytest.raises(ValueError, match="ddpm, ddim, dpm\\+\\+"):
        make_scheduler("euler")
    with pytest.raises(ValueError, match="v_prediction"):
        make_scheduler("ddpm", zero_terminal_snr=True)
    for name in SAMPLERS:
        s = make_scheduler(name)
        assert s.config.num_train_timesteps == 1000 and s.config.prediction_type == "epsilon"
        assert s.betas[0].item() == pytest.approx(0.00085) and s.betas[-1].item() == pytest.approx(0.012)
        assert torch.allclose(s.betas[1:] - s.betas[:-1], s.betas[1:2] - s.betas[:1], atol=1e-9)  # linear


def test_step_with_exact_noise_recovers_x0() -> None:
    """add_noise then one step at t with the true eps: the x0 estimate is exact, and DDIM moves to
    the noised x0 at the previous timestep."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 128, generator=g), torch.randn(2, 4, 128, generator=g)
    for name in ("ddpm", "ddim"):
        s = make_scheduler(name)
        s.set_timesteps(50)
        t = s.timesteps[10]
        out = s.step(eps, t, s.add_noise(x0, eps, t[None]), generator=g)
        assert torch.allclose(out.pred_original_sample, x0, atol=1e-4)
    prev_t = int(t) - 1000 // 50
    ab = s.alphas_cumprod[prev_t]
    assert torch.allclose(out.prev_sample, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-4)


@pytest.mark.parametrize("prediction_type, zero_snr", [("epsilon", False), ("v_prediction", False),
                                                       ("v_prediction", True)])
@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_converge_to_a_single_data_point(name: str, prediction_type: str, zero_snr: bool) -> None:
    """With data = one point x0, the optimal eps- (or v-) predictor is known in closed form; every sampler,
    ancestral or not, must then end at x0 — also when the first step starts from pure noise (ᾱ_T = 0)."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 128, generator=g)
    s = make_scheduler(name, prediction_type=prediction_type, zero_terminal_snr=zero_snr)
    assert s.config.prediction_type == prediction_type
    s.set_timesteps(20)
    if zero_snr:  # trailing spacing starts at the last training step, where nothing of x0 is left
        assert int(s.timesteps[0]) == 999 and s.alphas_cumprod[999] < 1e-6
    z = torch.randn(x0.shape, generator=g) * s.init_noise_sigma
    for t in s.timesteps:
        ab = s.alphas_cumprod[t]
        eps = (z - ab.sqrt() * x0) / (1 - ab).sqrt()
        out = eps if prediction_type == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
        z = s.step(out, t, z, generator=[torch.Generator().manual_seed(i) for i in range(2)]).prev_sample
    assert torch.allclose(z, x0, atol=2e-2)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_epsilon_scaling_divides_the_implied_noise(prediction_type: str) -> None:
    """Ning et al. 2024: ε̂ / λ. For v the returned v must imply exactly ε̂ / λ and the x₀ that goes with it."""
    g = torch.Generator().manual_seed(3)
    z, out = torch.randn(2, 4, 128, generator=g), torch.randn(2, 4, 128, generator=g)
    ab = torch.tensor(0.3)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    assert epsilon_scaling(out, z, ab, 1.0, prediction_type) is out
    assert epsilon_scaling(out, z, torch.tensor(0.0), 1.2, prediction_type) is out  # x_T = pure noise
    scaled = epsilon_scaling(out, z, ab, 1.25, prediction_type)
    eps = out if prediction_type == "epsilon" else a * out + s * z
    eps_scaled = scaled if prediction_type == "epsilon" else a * scaled + s * z
    assert torch.allclose(eps_scaled, eps / 1.25, atol=1e-5)
    if prediction_type == "v_prediction":  # x₀ = α·x_t − σ·v is consistent with x_t and the scaled ε
        assert torch.allclose(a * z - s * scaled, (z - s * eps / 1.25) / a, atol=1e-5)


def test_eps_scale_settings_parse_print_and_apply_by_timestep() -> None:
    assert EpsScale.parse("1.6@500") == EpsScale(1.6, 500) and str(EpsScale(1.6, 500)) == "1.6@500"
    assert EpsScale.parse(1.1) == EpsScale.parse("1.1") == EpsScale(1.1, 0) and str(EpsScale(1.1)) == "1.1"
    assert [EpsScale(1.6, 500).at(t) for t in (999, 500, 499, 0)] == [1.6, 1.6, 1.0, 1.0]
    assert str(EpsScale(1.23456789)) == "1.23456789" and str(EpsScale.parse("1")) == "1"
    for bad in ("x", "1.2@", "1.2@t5", "0", "inf", "nan", "1.2@-1"):
        with pytest.raises(ValueError, match="Epsilon Scaling"):
            EpsScale.parse(bad)
    factors = EpsScale(1.6, 500).factors(torch.tensor([999, 500, 499, 19]))
    assert factors.shape == (4, 1, 1) and factors.flatten().tolist() == pytest.approx([1.6, 1.6, 1.0, 1.0])
