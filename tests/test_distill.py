"""Few-step sampling (issue 11): the consistency maths against diffusers' samplers, the "lcm" sampler on a
bundle with a student, its errors, and a real tiny `synthgen train distill` run on PTB-XL (local Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen.conditions.spec import Condition
from synthgen.errors import InputError
from synthgen.model.bundle import load_bundle, save_bundle
from synthgen.model.consistency import (consistency_output, student_sample, scaled_x0_and_eps, solver_timesteps,
                                        teacher_ddim_step, trajectory_points, x0_and_eps)
from synthgen.model.distribution_matching import (Discriminator, discriminator_loss, dmd_gradient, dmd_loss,
                                                  generator_loss)
from synthgen.model.schedulers import EpsScale, epsilon_scaling, make_scheduler
from synthgen.model.unet import UNet1D
from synthgen.model.vae import VAE
from synthgen.pipeline import ECGPipeline
from synthgen.train.loop import frozen
from synthgen.train.presets import get_preset
from test_model import TINY_VAE, single_thread, tiny_unet_config  # noqa: F401 (autouse fixture)
from test_pipeline import CONDITIONS, HashEmbedder

NOISE = {"T": 1000, "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
         "zero_terminal_snr": True}  # the shipped teacher's schedule
STUDENT = {"method": "test", "sampler": "lcm", "guidance": 2.0, "original_inference_steps": 50, "max_steps": 4}
SYNTHGEN = [sys.executable, "-m", "synthgen"]


def tiny_teacher(url: str, embedder_name: str = "test-hash", dim: int = 16, prediction_type: str = "v_prediction",
                 student: bool = False) -> str:
    """A random v-prediction, zero-terminal-SNR bundle (optionally with a random student); its model hash."""
    torch.manual_seed(0)
    vae, unet = VAE(TINY_VAE), UNet1D(tiny_unet_config(dim))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)
    other = UNet1D(tiny_unet_config(dim)) if student else None
    if other is not None:
        torch.nn.init.normal_(other.conv_out.weight, std=0.1)
    config = {"vae": asdict(TINY_VAE), "unet": asdict(unet.cfg), "latent_scale": 0.5,
              "embedder": {"name": embedder_name, "dim": dim},
              "patient_stats": {"age_mean": 60.0, "age_std": 15.0, "hr_mean": 75.0, "hr_std": 15.0},
              "noise": {**NOISE, "prediction_type": prediction_type,
                        "zero_terminal_snr": prediction_type == "v_prediction"},
              "data_fingerprint": "test", "training": {"note": "random weights"},
              **({"student": STUDENT} if student else {})}
    return save_bundle(url, vae, unet, config, "# Tiny test teacher\n", student=other)


def lcm_scheduler(steps: int | None = None):
    s = make_scheduler("lcm", 1000, 0.00085, 0.012, "v_prediction", True, original_inference_steps=50)
    if steps:
        s.set_timesteps(steps)
    return s


# ---------------------------------------------------------------------------------------------- maths
def test_consistency_function_is_the_identity_at_the_boundary_and_x0_at_the_start():
    """c_skip(0) = 1, c_out(0) = 0: f(x, 0) = x whatever the network says; at t = 999 (ᾱ = 0) f is the
    network's x̂₀ = −v alone (c_skip ≈ 0), which is what one-step sampling returns."""
    scheduler = lcm_scheduler()
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(3, 4, 128, generator=g), torch.randn(3, 4, 128, generator=g)
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(torch.tensor([0.0]))
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    torch.testing.assert_close(consistency_output(scheduler, out, x, torch.zeros(3, dtype=torch.long),
                                                  "v_prediction"), x)
    start = consistency_output(scheduler, out, x, torch.full((3,), 999), "v_prediction")
    torch.testing.assert_close(start, -out, atol=1e-4, rtol=0)


def test_training_target_parameterisation_is_the_lcm_samplers():
    """The student is trained on consistency_output with per-sample timesteps; the "lcm" sampler steps with
    diffusers' LCMScheduler: both must compute the same x₀ at each of its timesteps."""
    scheduler = lcm_scheduler(4)
    assert scheduler.timesteps.tolist() == [999, 759, 499, 259]
    assert set(scheduler.timesteps.tolist()) <= set(solver_timesteps(1000, 50).tolist())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 128, generator=g)
    for t in scheduler.timesteps:
        out = torch.randn(2, 4, 128, generator=g)
        ours = consistency_output(scheduler, out, x, t.expand(2), "v_prediction")
        step = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(ours, step.denoised, atol=1e-5, rtol=1e-5)
        x = step.prev_sample


@pytest.mark.parametrize("eps_scale", [1.0, 1.1])
def test_teacher_solver_is_the_ddim_sampler_with_epsilon_scaling(eps_scale):
    """The teacher's skipping step (k = 20) is one step of the pipeline's "ddim" sampler at 50 steps, Epsilon
    Scaling included, at every grid timestep: at t = 999 (pure noise), in between, and the last, t = 19 → x̂₀."""
    ddim = make_scheduler("ddim", 1000, 0.00085, 0.012, "v_prediction", True)
    ddim.set_timesteps(50)
    alphas = ddim.alphas_cumprod
    assert ddim.timesteps.tolist() == solver_timesteps(1000, 50).flip(0).tolist()
    g = torch.Generator().manual_seed(3)
    for t in (999, 499, 19):
        x, out = torch.randn(2, 4, 128, generator=g), torch.randn(2, 4, 128, generator=g)
        scaled = epsilon_scaling(out, x, alphas[t], eps_scale, "v_prediction")
        expected = ddim.step(scaled, t, x).prev_sample
        a_prev = alphas[t - 20] if t >= 20 else torch.tensor(1.0)
        ours = teacher_ddim_step(out, x, alphas[t].expand(2)[:, None, None], a_prev.expand(2)[:, None, None],
                                 "v_prediction", eps_scale)
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_teacher_solver_scales_each_sample_by_its_own_factor():
    """Per-sample factors (an interval setting gives 1 below its timestep): each row equals its scalar step."""
    g = torch.Generator().manual_seed(4)
    x, out = torch.randn(2, 4, 128, generator=g), torch.randn(2, 4, 128, generator=g)
    ab, ab_prev = torch.full((2, 1, 1), 0.4), torch.full((2, 1, 1), 0.6)
    both = teacher_ddim_step(out, x, ab, ab_prev, "v_prediction", torch.tensor([1.3, 1.0])[:, None, None])
    for i, factor in enumerate((1.3, 1.0)):
        alone = teacher_ddim_step(out[i:i + 1], x[i:i + 1], ab[:1], ab_prev[:1], "v_prediction", factor)
        torch.testing.assert_close(both[i:i + 1], alone)


def test_scaled_x0_is_the_samplers_epsilon_scaling():
    """Per-sample Epsilon Scaling of (x̂₀, ε̂) equals the pipeline's ``epsilon_scaling`` applied sample by sample,
    and leaves the pure-noise step (ᾱ = 0) alone."""
    scheduler = lcm_scheduler()
    g = torch.Generator().manual_seed(5)
    x, out = torch.randn(3, 4, 128, generator=g), torch.randn(3, 4, 128, generator=g)
    t = torch.tensor([999, 600, 200])
    alphas = scheduler.alphas_cumprod[t][:, None, None]
    factors = torch.tensor([1.6, 1.6, 1.0])[:, None, None]
    x0, eps = scaled_x0_and_eps(out, x, alphas, "v_prediction", factors)
    for i in range(3):
        scaled = epsilon_scaling(out[i:i + 1], x[i:i + 1], alphas[i, 0, 0], float(factors[i]), "v_prediction")
        want_x0, want_eps = x0_and_eps(scaled, x[i:i + 1], alphas[i:i + 1], "v_prediction")
        torch.testing.assert_close(x0[i:i + 1], want_x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(eps[i:i + 1], want_eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0[0], -out[0], atol=1e-4, rtol=0)  # ᾱ_999 = 0: x̂₀ = −v, unscaled


def test_dmd_loss_moves_samples_against_the_normalised_score_difference():
    """The surrogate loss's gradient in each sample is the DMD gradient / B — zero where the fake and real scores
    agree — and a small step along −gradient brings the sample's denoised estimate towards the real one."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 128, generator=g).requires_grad_(True)
    x0_real, x0_fake = torch.randn(2, 4, 128, generator=g), torch.randn(2, 4, 128, generator=g)
    gradient = dmd_gradient(x.detach(), x0_real, x0_fake)
    dmd_loss(x, gradient).backward()
    torch.testing.assert_close(x.grad, gradient / 2)
    weight = 1 / (x.detach() - x0_real).abs().mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(gradient, (x0_fake - x0_real) * weight)
    assert torch.all(dmd_gradient(x.detach(), x0_real, x0_real) == 0)


def test_the_gan_classifier_reads_the_fake_networks_bottleneck_and_learns_to_separate():
    """DMD2's GAN term: the classifier sees the bottleneck of the fake network's last call (one logit per sample,
    gradients reaching the input), its loss is 2 ln 2 at chance and falls as it separates two sets of latents
    that differ, and the generator loss falls as the classifier calls fakes real."""
    torch.manual_seed(0)
    fake = UNet1D(tiny_unet_config(16))
    d = Discriminator(fake)
    cond = (torch.randn(8, 16), torch.ones(8, dtype=torch.bool), torch.zeros(8, 3), torch.ones(8, 3, dtype=torch.bool))
    x = torch.randn(8, 4, 128, requires_grad=True)
    fake(x, torch.full((8,), 100), *cond)
    logits = d()
    assert logits.shape == (8,)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="no call of the fake network"):
        d()  # consumed: a classifier call needs a fake call of its own
    with torch.no_grad():
        fake(x, torch.full((8,), 100), *cond)  # a score evaluation, not a call to classify
    with pytest.raises(RuntimeError, match="no call of the fake network"):
        d()

    # the generator's loss through the frozen fake network and classifier reaches the sample only
    x.grad = None
    fake.zero_grad(set_to_none=True)
    d.zero_grad(set_to_none=True)
    with frozen(fake, d):
        fake(x, torch.full((8,), 100), *cond)
        generator_loss(d()).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*fake.parameters(), *d.parameters()])
    assert all(p.requires_grad for p in [*fake.parameters(), *d.parameters()])  # restored
    with pytest.raises(ValueError), frozen(d):
        raise ValueError
    assert all(p.requires_grad for p in d.parameters())

    zero = torch.zeros(4)
    assert float(discriminator_loss(zero, zero)) == pytest.approx(2 * np.log(2))
    assert float(generator_loss(torch.tensor([2.0]))) < float(generator_loss(torch.tensor([-2.0])))
    optimizer = torch.optim.Adam(d.parameters(), lr=1e-2)
    t = torch.full((8,), 100)
    losses = []
    for _ in range(30):
        fake(torch.randn(8, 4, 128) * 0.2, t, *cond)
        logits_fake = d()
        fake(torch.randn(8, 4, 128) * 2.0, t, *cond)
        loss = discriminator_loss(logits_fake, d())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[0] == pytest.approx(2 * np.log(2), abs=0.3) and losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("steps", [1, 2])
def test_student_sample_is_the_lcm_sampler_and_backpropagates_through_its_last_step(steps: int):
    """The student's sample in training is what the "lcm" sampler returns at 1 or 2 steps (before decoding),
    and only its last network call carries a gradient (DMD2's backward simulation)."""
    scheduler = lcm_scheduler(steps)
    z = torch.randn(2, 4, 128, generator=torch.Generator().manual_seed(7))
    weight = torch.nn.Parameter(torch.tensor(0.3))
    seen = []

    def student(x, t, *cond):
        seen.append((t.tolist(), torch.is_grad_enabled()))
        return weight * x + t[:, None, None] / 1000

    ours = student_sample(student, scheduler, steps, z, (), "v_prediction",
                          generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    ours.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad)
    with torch.no_grad():  # the pipeline's loop
        scheduler.set_timesteps(steps)
        x, generators = z, [torch.Generator().manual_seed(s) for s in (1, 2)]
        for t in scheduler.timesteps:
            out = scheduler.step(student(x, t.expand(2)), t, x, generator=generators)
            x = out.prev_sample
    torch.testing.assert_close(ours, out.denoised)
    timesteps = [t for t, _ in seen[:steps]]
    assert [g for _, g in seen[:steps]] == [False] * (steps - 1) + [True]
    assert timesteps[0] == [999, 999] and len({t[0] for t in timesteps}) == steps


def test_trajectory_points_are_where_the_lcm_sampler_calls_the_student():
    """The regression pool's points for 1 and 2 steps: (z, T) once, with the one-step sample as its target, then
    the two-step sampler's second input and its output — the lcm sampler's 2-step sample."""
    z = torch.randn(2, 4, 128, generator=torch.Generator().manual_seed(7))

    def student(x, t, *cond):
        return 0.3 * x + t[:, None, None] / 1000

    points = trajectory_points(student, lcm_scheduler(), (1, 2), z, (), "v_prediction",
                               generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert len(points) == 2 and torch.equal(points[0][0], z) and points[0][1].tolist() == [999, 999]
    torch.testing.assert_close(points[0][2], student_sample(student, lcm_scheduler(), 1, z, (), "v_prediction"))
    two = student_sample(student, lcm_scheduler(), 2, z, (), "v_prediction",
                         generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    torch.testing.assert_close(points[1][2], two)
    assert points[1][1].tolist()[0] < 999 and not torch.equal(points[1][0], z)
    assert len(trajectory_points(student, lcm_scheduler(), (1, 2, 4), z, (), "v_prediction")) == 1 + 1 + 3


# -------------------------------------------------------------------------------------------- sampler
@pytest.fixture(scope="module")
def student_pipe(tmp_path_factory: pytest.TempPathFactory) -> ECGPipeline:
    url = str(tmp_path_factory.mktemp("student"))
    tiny_teacher(url, student=True)
    return ECGPipeline(load_bundle(url), embedder=HashEmbedder())


def test_bundle_keeps_the_student_and_checks_its_hash(tmp_path: Path):
    url = tmp_path / "m"
    tiny_teacher(str(url), student=True)
    bundle = load_bundle(str(url))
    assert set(bundle.config["files"]) == {"vae.safetensors", "unet.safetensors", "student.safetensors"}
    assert bundle.student is not None and not bundle.student.training
    assert not torch.equal(bundle.student.conv_out.weight, bundle.unet.conv_out.weight)
    data = bytearray((url / "student.safetensors").read_bytes())
    data[-1] ^= 1
    (url / "student.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="student.safetensors has sha256"):
        load_bundle(str(url))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_student_samples_in_one_to_four_steps(student_pipe: ECGPipeline, steps: int):
    a = student_pipe(CONDITIONS, seeds=[1, 2, 3], sampler="lcm", steps=steps)
    assert a.shape == (3, 12, 1024) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, student_pipe(CONDITIONS, seeds=[1, 2, 3], sampler="lcm", steps=steps))
    alone = student_pipe(CONDITIONS[1:2], seeds=[2], sampler="lcm", steps=steps)
    np.testing.assert_allclose(alone[0], a[1], atol=1e-5)  # independent of batch-mates, noise included
    # it is the student that samples, not the teacher's U-Net
    ddim_student_steps = student_pipe(CONDITIONS, seeds=[1, 2, 3], sampler="ddim", steps=steps)
    assert not np.allclose(a, ddim_student_steps)


def test_student_uses_one_network_call_per_step(student_pipe: ECGPipeline):
    calls = []
    hook = student_pipe.student.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    teacher_hook = student_pipe.unet.register_forward_hook(lambda m, i, o: calls.append(-1))
    try:
        student_pipe(CONDITIONS, seeds=[1, 2, 3], sampler="lcm", steps=2)
    finally:
        hook.remove()
        teacher_hook.remove()
    assert calls == [3, 3]  # guidance folded in: no doubled batch, no teacher call


def test_student_sampler_errors(student_pipe: ECGPipeline, tmp_path: Path):
    for steps in (0, 5):
        with pytest.raises(InputError, match=f"--steps {steps}: the lcm student samples in 1 to 4 steps"):
            student_pipe(CONDITIONS, seeds=[1, 2, 3], sampler="lcm", steps=steps)
    with pytest.raises(InputError, match="--guidance 3: the lcm student has guidance 2 folded in"):
        student_pipe(CONDITIONS, seeds=[1, 2, 3], sampler="lcm", steps=2, guidance=3.0)
    tiny_teacher(str(tmp_path / "plain"))
    plain = ECGPipeline(load_bundle(str(tmp_path / "plain")), embedder=HashEmbedder())
    with pytest.raises(InputError, match="has no distilled student; make one with `synthgen train distill`"):
        plain(CONDITIONS, seeds=[1, 2, 3], sampler="lcm", steps=2)


def test_generate_refuses_lcm_without_a_student_before_writing(tmp_path: Path):
    """A bundle without a student: one line, exit 2, nothing written (checked on the driver)."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("report,age,sex,hr\nsinus rhythm,60,M,70\n")
    tiny_teacher(str(tmp_path / "plain"))
    run = subprocess.run([*SYNTHGEN, "generate", "--manifest", str(manifest), "--out", str(tmp_path / "out"),
                          "--model", str(tmp_path / "plain"), "--sampler", "lcm", "--steps", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "has no distilled student" in run.stderr
    assert not (tmp_path / "out").exists()


def test_default_sampling_is_set_on_a_bundle_that_can_sample_that_way(tmp_path: Path):
    """set_default_sampling: refused (one line) for a sampling the bundle cannot do; otherwise config.json's
    sampling.default, a new model hash, byte-identical weights, one card section (replaced when set again),
    and the pipeline without a sampler samples that way."""
    from synthgen.model.bundle import default_sampling, set_default_sampling, without_default_sampling

    url = str(tmp_path / "b")
    before = tiny_teacher(url, student=True)
    assert default_sampling(load_bundle(url).config) == {"sampler": "dpm++sde", "steps": 20, "decoder": "vae"}
    weights = {p.name: p.read_bytes() for p in Path(url).glob("*.safetensors")}
    for args, message in ((("lcm", 2, "tiny"), "has no tiny decoder"), (("lcm", 5, "vae"), "--steps 5"),
                          (("euler", 2, "vae"), "sampler 'euler' at 2 steps: expected one of")):
        with pytest.raises(InputError, match=message):
            set_default_sampling(url, *args, reason="r")
    after = set_default_sampling(url, "lcm", 2, "vae", reason="measured in docs")
    bundle = load_bundle(url)
    assert after == bundle.model_hash != before
    assert default_sampling(bundle.config) == {"sampler": "lcm", "steps": 2, "decoder": "vae"}
    assert {p.name: p.read_bytes() for p in Path(url).glob("*.safetensors")} == weights
    pipe = ECGPipeline(bundle, embedder=HashEmbedder())
    np.testing.assert_array_equal(pipe(CONDITIONS, seeds=[1, 2, 3]),
                                  pipe(CONDITIONS, seeds=[1, 2, 3], sampler="lcm", steps=2, decoder="vae"))
    (Path(url) / "MODEL_CARD.md").write_text((Path(url) / "MODEL_CARD.md").read_text() + "\n## Later\n\nkept\n")
    set_default_sampling(url, "ddim", 10, "vae", reason="again")
    card = (Path(url) / "MODEL_CARD.md").read_text()
    assert card.startswith("# Tiny test teacher") and card.count("## Default sampling") == 1
    assert "`--sampler ddim --steps 10 --decoder vae` (again)" in card and "## Later\n\nkept\n" in card
    config, card = without_default_sampling(load_bundle(url).config, card)  # what a derived bundle starts from
    assert default_sampling(config)["sampler"] == "dpm++sde" and "Default sampling" not in card
    assert card.startswith("# Tiny test teacher") and "## Later\n\nkept\n" in card
    bad = {"sampling": {"default": {"sampler": "lcm", "steps": 0, "decoder": "tiny"}}}
    with pytest.raises(InputError, match="config.json: sampling.default must be"):
        default_sampling(bad)
    tiny_teacher(str(tmp_path / "plain"))
    with pytest.raises(InputError, match="has no distilled student"):
        set_default_sampling(str(tmp_path / "plain"), "lcm", 1, "vae", reason="r")


# ------------------------------------------------------------------------------------------- training
def test_distill_config_round_trips():
    from synthgen.train.presets import TrainConfig

    for name in ("small", "paper", "tiny"):
        tc = get_preset(name, seed=2)
        assert TrainConfig.from_dict(tc.to_dict()) == tc
        assert TrainConfig.from_dict(json.loads(json.dumps(tc.to_dict()))).distill == tc.distill


def test_kept_weights_are_chosen_on_the_select_steps_only():
    """The student is scored at 1, 2 and 4 steps but its weights are chosen on 1 and 2 (the step counts faster
    than deepfake-ecg): a bad 4-step score does not move ``select``."""
    from synthgen.train.diffusion_stage import check_metrics

    dc = get_preset("small").distill
    assert dc.sample_check_steps == (1, 2, 4) and dc.select_steps == (1, 2)
    found = {"lcm-1": {"score": 2.0}, "lcm-2": {"score": 4.0}, "lcm-4": {"score": 100.0}}
    metrics = check_metrics(found, [f"lcm-{s}" for s in dc.select_steps])
    assert metrics["select"] == 3.0 and metrics["lcm4_score"] == 100.0
    assert check_metrics(found)["select"] == 106.0 / 3  # stage 2: every sampler counts


def test_distill_refuses_an_epsilon_teacher(ptbxl_shards, tmp_path: Path):
    from synthgen.train.distill_stage import distill

    teacher = tmp_path / "eps"
    tiny_teacher(str(teacher), "local", 384, prediction_type="epsilon")
    with pytest.raises(InputError, match="noise.prediction_type is 'epsilon'; distillation needs a 'v_prediction'"):
        distill(str(ptbxl_shards), str(tmp_path / "run"), teacher=str(teacher), preset="tiny")
    assert not (tmp_path / "run").exists()


def test_tiny_distillation_writes_a_bundle_whose_student_samples(ptbxl_shards, ray_local, tmp_path: Path):
    """`synthgen train distill` (tiny preset, 1 worker) on the real PTB-XL shards from a tiny v-prediction
    teacher: the bundle holds teacher + student, the student samples in 1, 2 and 4 steps, a rerun is a no-op."""
    from synthgen.conditions.embedders import get_embedder

    teacher, out = tmp_path / "teacher", tmp_path / "run"
    teacher_hash = tiny_teacher(str(teacher), "local", 384)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    args = [*SYNTHGEN, "train", "distill", "--data", str(ptbxl_shards), "--out", str(out), "--teacher", str(teacher),
            "--preset", "tiny"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == str(out / "distilled")
    assert "[distill] epoch 1/1" in run.stdout

    bundle = load_bundle(str(out / "distilled"))
    student = bundle.config["student"]
    tiny = get_preset("tiny").distill
    assert student["teacher"]["model_hash"] == teacher_hash and student["guidance"] == tiny.guidance
    assert set(student["scores"]) == {f"lcm-{s}" for s in tiny.sample_check_steps}
    assert set(student["teacher_scores"]) == {f"{s}-{n}" for s, n in tiny.teacher_reference}
    assert student["training"]["steps"] > 0 and student["training"]["best_epoch"] == 1
    # the teacher travels unchanged; the student was trained away from its initial copy of the teacher
    teacher_bundle = load_bundle(str(teacher))
    assert all(torch.equal(a, b) for a, b in zip(bundle.unet.state_dict().values(),
                                                 teacher_bundle.unet.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(bundle.student.state_dict().values(),
                                                     teacher_bundle.unet.state_dict().values()))
    assert "Stage 3: few-step student" in (out / "distilled" / "MODEL_CARD.md").read_text()

    pipe = ECGPipeline(bundle, get_embedder("local"))
    for steps in (1, 2, 4):
        ecg = pipe([Condition(("sinus rhythm",), 60, "F", 70)], seeds=[5], sampler="lcm", steps=steps)
        assert ecg.shape == (1, 12, 1024) and np.isfinite(ecg).all()

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already distilled" in again.stdout


def test_dmd_needs_a_student_to_refine_and_a_known_method(ptbxl_shards, tmp_path: Path):
    from synthgen.train.distill_stage import distill

    teacher = tmp_path / "teacher"
    tiny_teacher(str(teacher), "local", 384)
    for method in ("dmd", "regress"):
        with pytest.raises(InputError, match=f"no distilled student to start from; --method {method} needs one"):
            distill(str(ptbxl_shards), str(tmp_path / "run"), teacher=str(teacher), method=method, preset="tiny")
    with pytest.raises(InputError, match="--method 'gan': expected one of lcd, dmd, regress"):
        distill(str(ptbxl_shards), str(tmp_path / "run"), teacher=str(teacher), method="gan", preset="tiny")
    assert not (tmp_path / "run").exists()
    # an --out that already holds another method's student is not taken for this method's result
    tiny_teacher(str(tmp_path / "other" / "distilled"), "local", 384, student=True)
    with pytest.raises(InputError, match="holds a student made by 'test', not --method lcd; use another --out"):
        distill(str(ptbxl_shards), str(tmp_path / "other"), teacher=str(teacher), method="lcd", preset="tiny")


@pytest.fixture(scope="module")
def narrow(ptbxl_shards, ray_local, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """`synthgen train distill --method regress` (tiny preset) on the real PTB-XL shards from a tiny teacher
    bundle with a student: (teacher, out, the finished run)."""
    root = tmp_path_factory.mktemp("narrow")
    teacher, out = root / "teacher", root / "run"
    tiny_teacher(str(teacher), "local", 384, student=True)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    args = [*SYNTHGEN, "train", "distill", "--data", str(ptbxl_shards), "--out", str(out), "--teacher", str(teacher),
            "--method", "regress", "--preset", "tiny"]
    return teacher, out, subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


def test_tiny_regress_makes_a_narrower_student(narrow, ptbxl_shards, tmp_path: Path, monkeypatch):
    """The regressed student is the U-Net at the preset's width, recorded in the config (``student.model``) and
    loaded at it, closer to its source's samples than the same network untrained, with a card section; the
    teacher is kept, and it samples in 1 and 2 steps. A width not narrower than the student's (or not divisible
    by its norm groups), step counts the sampler does not take, no noise draw, or too little data for one batch
    is refused before Ray starts."""
    from dataclasses import replace

    from synthgen.conditions.embedders import get_embedder
    from synthgen.model.unet import UNetConfig
    from synthgen.train import distill_stage

    teacher, out, run = narrow
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == str(out / "distilled") and "trajectory pool" in run.stdout
    start, bundle = load_bundle(str(teacher)), load_bundle(str(out / "distilled"))
    student, width = bundle.config["student"], get_preset("tiny").regress.base_channels
    assert student["method"].startswith("regression onto the student's sampling trajectories")
    assert student["model"]["base_channels"] == width == bundle.student.cfg.base_channels
    assert width < start.student.cfg.base_channels
    assert student["initialised_from"]["method"] == STUDENT["method"] and student["guidance"] == STUDENT["guidance"]
    assert student["training"]["best_val_mse"] >= 0 and set(student["scores"]) == {"lcm-1", "lcm-2"}
    assert all(torch.equal(a, b) for a, b in zip(bundle.unet.state_dict().values(), start.unet.state_dict().values()))
    assert "Stage 3, narrowed" in (out / "distilled" / "MODEL_CARD.md").read_text()
    emb = get_embedder("local")
    conditions = [Condition(("sinus rhythm",), 60, "F", 70), Condition(("atrial fibrillation",), 75, "M", 110)]

    def latents(b) -> torch.Tensor:
        pipe = ECGPipeline(b, emb)
        z = torch.randn(pipe.latent_shape(2), generator=torch.Generator().manual_seed(3))
        return student_sample(b.student, lcm_scheduler(), 1, z, pipe.encode_conditions(conditions), "v_prediction")

    torch.manual_seed(0)
    untrained = replace(bundle, student=UNet1D(UNetConfig(**student["model"])).eval())
    with torch.no_grad():
        wanted = latents(start)
        assert (latents(bundle) - wanted).pow(2).mean() < (latents(untrained) - wanted).pow(2).mean()
    for steps in (1, 2):
        ecg = ECGPipeline(bundle, emb)(conditions, seeds=[5, 6], sampler="lcm", steps=steps)
        assert ecg.shape == (2, 12, 1024) and np.isfinite(ecg).all()

    tiny = get_preset("tiny")
    for change, message in (
            (dict(base_channels=16), r"regress.base_channels 16 must be narrower than the student's 16"),
            (dict(base_channels=6), r"regress.base_channels 6 .* divisible by regress.norm_groups 4"),
            (dict(base_channels=4, norm_groups=1, steps=(1, 5)), r"regress.steps must be in 1..4"),
            (dict(copies=0), r"regress.copies and regress.val_n >= 1; got \[1, 2\], 0 and 16"),
            (dict(stage=replace(tiny.regress.stage, batch_size=100_000)), r"expected at least one batch")):
        bad = replace(tiny, regress=replace(tiny.regress, **change))
        monkeypatch.setattr(distill_stage, "get_preset", lambda name, seed, bad=bad: bad)
        with pytest.raises(InputError, match=message):
            distill_stage.distill(str(ptbxl_shards), str(tmp_path / "bad"), teacher=str(teacher), method="regress",
                                  preset="tiny")
    assert not (tmp_path / "bad").exists()


def test_tiny_dmd_refines_the_narrow_student_and_records_where_it_started(narrow, ptbxl_shards, ray_local,
                                                                         tmp_path: Path):
    """`synthgen train distill --method dmd` (tiny preset) from the regressed bundle: the bundle keeps the
    teacher, the student keeps its width and moved away from where it started, and the config and card say how
    it was made; the kept weights are the student's EMA at the epoch of lowest validation FID; the teacher
    bundle's default sampling is not inherited; the student samples in one step."""
    import shutil

    from synthgen.conditions.embedders import get_embedder
    from synthgen.model.bundle import default_sampling, set_default_sampling

    assert narrow[2].returncode == 0, narrow[2].stdout[-3000:] + narrow[2].stderr[-3000:]
    teacher, out = tmp_path / "teacher", tmp_path / "run"
    shutil.copytree(narrow[1] / "distilled", teacher)
    set_default_sampling(str(teacher), "lcm", 2, "vae", reason="the teacher's gates")
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    args = [*SYNTHGEN, "train", "distill", "--data", str(ptbxl_shards), "--out", str(out), "--teacher", str(teacher),
            "--method", "dmd", "--preset", "tiny"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == str(out / "distilled")

    start, bundle = load_bundle(str(teacher)), load_bundle(str(out / "distilled"))
    student = bundle.config["student"]
    assert student["method"].startswith("distribution matching distillation")
    assert student["initialised_from"]["method"] == start.config["student"]["method"]
    assert student["model"] == start.config["student"]["model"] and bundle.student.cfg == start.student.cfg
    assert student["original_inference_steps"] == STUDENT["original_inference_steps"]
    assert student["teacher"]["real_eps_scale"] == str(EpsScale.parse(get_preset("tiny").dmd.real_eps_scale))
    assert set(student["scores"]) == {"lcm-1", "lcm-2"} and student["training"]["steps"] > 0
    assert all(torch.equal(a, b) for a, b in zip(bundle.unet.state_dict().values(), start.unet.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(bundle.student.state_dict().values(),
                                                     start.student.state_dict().values()))
    card = (out / "distilled" / "MODEL_CARD.md").read_text()
    assert "Distribution Matching Distillation" in card and "Stage 3, narrowed" in card
    # the tiny preset keeps DMD2's GAN term on: its classifier's and generator's losses on the epoch line, the card
    assert get_preset("tiny").dmd.gan_weight > 0 and " gan_d " in run.stdout and " gan_g " in run.stdout
    assert "GAN term (DMD2)" in card
    # the kept epoch is the one with the lowest mean validation FID over fid_steps, as the epoch lines show it
    lines = [line for line in run.stdout.splitlines() if "[distill] epoch " in line]
    assert len(lines) == get_preset("tiny").dmd.stage.epochs == 2
    fids = [dict(zip(words := line.split(), words[1:])) for line in lines]
    assert all(0 < float(f["lcm1_fid"]) and 0 < float(f["lcm2_fid"]) for f in fids)
    selects = [float(f["select"]) for f in fids]
    assert selects == pytest.approx([(float(f["lcm1_fid"]) + float(f["lcm2_fid"])) / 2 for f in fids], rel=1e-3)
    kept = int(np.argmin(selects))
    assert student["training"]["best_epoch"] == kept + 1
    assert student["training"]["best_val_fid"] == pytest.approx(selects[kept], rel=1e-3)
    assert default_sampling(bundle.config)["sampler"] == "dpm++sde" and "## Default sampling" not in card
    states = sorted((out / "checkpoints").rglob("state.pt"), key=lambda p: p.stat().st_mtime)
    state = torch.load(states[-1], map_location="cpu", weights_only=True)

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert same(bundle.student.state_dict(), state["best"]) and not same(state["best"], state["model"])
    assert same(state["best"], state["ema"]["model"]) == (kept == len(lines) - 1)  # the EMA, not the raw weights
    assert f"kept the weights of the student's EMA (decay {get_preset('tiny').dmd.ema_decay:g}) with the lowest mean " \
           "validation FID over 1, 2 steps" in card
    ecg = ECGPipeline(bundle, get_embedder("local"))([Condition(("sinus rhythm",), 60, "F", 70)], seeds=[5],
                                                     sampler="lcm", steps=1)
    assert ecg.shape == (1, 12, 1024) and np.isfinite(ecg).all()


def test_dmd_settings_outside_the_teachers_schedule_are_refused(ptbxl_shards, tmp_path: Path, monkeypatch):
    """A DMD timestep range beyond the teacher's T, no fake-score update, a student or FID step count the
    sampler does not take, a negative GAN weight, an EMA decay outside (0, 1) or a validation FID on fewer than
    5 ECGs is a one-line error before Ray starts."""
    from dataclasses import replace

    from synthgen.train import distill_stage

    teacher = tmp_path / "teacher"
    tiny_teacher(str(teacher), "local", 384, student=True)
    tiny = get_preset("tiny")
    for bad in (replace(tiny.dmd, t_range=(20, 1000)), replace(tiny.dmd, fake_updates=0),
                replace(tiny.dmd, student_steps=(1, 5)), replace(tiny.dmd, student_steps=()),
                replace(tiny.dmd, fid_steps=(0,))):
        monkeypatch.setattr(distill_stage, "get_preset", lambda name, seed, bad=bad: replace(tiny, dmd=bad))
        with pytest.raises(InputError, match=r"dmd needs fake_updates >= 1, 0 <= t_range\[0\] <= t_range\[1\] "
                                             r"< 1000 \(the teacher's T\) and student_steps \(at least one\) and "
                                             r"fid_steps in 1..4"):
            distill_stage.distill(str(ptbxl_shards), str(tmp_path / "run"), teacher=str(teacher), method="dmd",
                                  preset="tiny")
    for bad in (replace(tiny.dmd, gan_weight=-1.0), replace(tiny.dmd, gan_head_lr=0.0),
                replace(tiny.dmd, gan_d_weight=0.0)):  # a classifier that never learns, pushing the student
        monkeypatch.setattr(distill_stage, "get_preset", lambda name, seed, bad=bad: replace(tiny, dmd=bad))
        with pytest.raises(InputError, match=r"dmd's GAN term needs gan_weight 0 \(off\) or > 0 with gan_d_weight > 0 "
                                             r"and gan_head_lr > 0; got "):
            distill_stage.distill(str(ptbxl_shards), str(tmp_path / "run"), teacher=str(teacher), method="dmd",
                                  preset="tiny")
    for bad in (replace(tiny.dmd, ema_decay=1.0), replace(tiny.dmd, ema_decay=0.0), replace(tiny.dmd, fid_n=4)):
        monkeypatch.setattr(distill_stage, "get_preset", lambda name, seed, bad=bad: replace(tiny, dmd=bad))
        with pytest.raises(InputError, match=r"dmd's ema_decay must be None \(off\) or in \(0, 1\) and fid_n >= 5; "):
            distill_stage.distill(str(ptbxl_shards), str(tmp_path / "run"), teacher=str(teacher), method="dmd",
                                  preset="tiny")
    assert not (tmp_path / "run").exists()
