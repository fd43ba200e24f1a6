"""A model bundle: one folder (local or object storage) with everything needed to sample, in the layout
``synthgen.io.bundles`` writes and reads:

    vae.safetensors    VAE weights
    unet.safetensors   U-Net weights
    student.safetensors  optional: a distilled few-step U-Net (`synthgen train distill`, config key "student")
    tiny_decoder.safetensors  optional: a narrower VAE decoder distilled from the VAE's (`synthgen train
                       tiny-decoder`, config key "tiny_decoder")
    MODEL_CARD.md      what the model is, what it was trained on, its limits
    config.json        module configs, latent scale, embedder, patient stats, noise schedule, training
                       provenance, and the sha256 of each weight file; written last

The model hash is the sha256 of config.json's bytes: as config.json pins the weight hashes, it identifies
the exact weights and settings that produced a sample.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import asdict, dataclass, fields
from typing import Any

from synthgen.errors import InputError
from synthgen.io.bundles import CONFIG_FILE, load_weights, read_card, read_config, save_bundle_files
from synthgen.io.paths import StorageOptions
from synthgen.model.consistency import check_student_sampler
from synthgen.model.schedulers import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, STUDENT_SAMPLERS
from synthgen.model.unet import UNet1D, UNetConfig
from synthgen.model.vae import VAE, Decoder, VAEConfig

WEIGHT_FILES = {"vae": "vae.safetensors", "unet": "unet.safetensors", "student": "student.safetensors",
                "tiny_decoder": "tiny_decoder.safetensors"}
DECODERS = ("vae", "tiny")  # the VAE's decoder, or the bundle's tiny decoder
REQUIRED_KEYS = ("vae", "unet", "latent_scale", "embedder", "patient_stats", "noise", "files")  # to sample
DEFAULT_SECTION = "## Default sampling"  # the model card's section on it (set_default_sampling)


@dataclass
class Bundle:
    """A verified, ready-to-sample model; ``model_hash`` identifies it in every output manifest."""

    vae: VAE
    unet: UNet1D
    config: dict[str, Any]
    model_hash: str
    url: str
    student: UNet1D | None = None  # the distilled few-step U-Net (``unet``'s architecture or narrower), if any
    tiny_decoder: Decoder | None = None  # a narrower decoder of the same latents (``ECGPipeline(decoder="tiny")``)

    def saved_config(self) -> dict[str, Any]:
        """config.json's keys without those ``save_bundle`` adds (``files``, ``synthgen_version``): what a
        bundle written from this one starts from."""
        return {k: v for k, v in self.config.items() if k not in ("files", "synthgen_version")}


def check_decoder(bundle: Bundle, name: str) -> None:
    """InputError (one line) unless ``bundle`` can decode with the decoder called ``name`` (``DECODERS``)."""
    if name not in DECODERS:
        raise InputError(f"--decoder {name!r}: expected one of {', '.join(DECODERS)}")
    if name == "tiny" and bundle.tiny_decoder is None:
        raise InputError(f"--decoder tiny: model bundle {bundle.url} has no tiny decoder; make one with "
                         "`synthgen train tiny-decoder`, or use --decoder vae")


def save_bundle(url: str, vae: VAE, unet: UNet1D, config: dict[str, Any], card: str,
                storage_options: StorageOptions = None, student: UNet1D | None = None,
                tiny_decoder: Decoder | None = None) -> str:
    """Write a bundle into directory ``url``; returns the model hash. ``config`` holds the contract's keys
    (vae, unet, latent_scale, embedder, patient_stats, noise, data_fingerprint, training), "student" when
    ``student`` is given (its ``model``, the student's UNetConfig, is set here) and "tiny_decoder" ({"model": its
    VAEConfig, ...}) when ``tiny_decoder`` is."""
    if student is not None and isinstance(config.get("student"), dict):  # its architecture, which may be narrower
        config = {**config, "student": {**config["student"], "model": asdict(student.cfg)}}
    modules = {WEIGHT_FILES["vae"]: vae, WEIGHT_FILES["unet"]: unet}
    for key, module in (("student", student), ("tiny_decoder", tiny_decoder)):
        if module is not None:
            modules[WEIGHT_FILES[key]] = module
    return save_bundle_files(url, modules, config, card, storage_options)


def default_sampling(config: dict[str, Any]) -> dict[str, Any]:
    """``{"sampler", "steps", "decoder"}`` that `generate` and ``ECGPipeline`` use when no sampler is given:
    config.json's ``sampling.default`` (``set_default_sampling``), else the teacher's ``DEFAULT_SAMPLER`` at its
    default steps with the VAE's decoder."""
    chosen = config.get("sampling", {}).get("default")
    if chosen is None:
        return {"sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS[DEFAULT_SAMPLER], "decoder": "vae"}
    found = {k: chosen.get(k) for k in ("sampler", "steps", "decoder")} if isinstance(chosen, dict) else {}
    if not (found.get("sampler") in SAMPLERS + STUDENT_SAMPLERS and isinstance(found.get("steps"), int)
            and found["steps"] >= 1 and found.get("decoder") in DECODERS):
        raise InputError(f"{CONFIG_FILE}: sampling.default must be {{sampler, steps >= 1, decoder}} with a known "
                         f"sampler and decoder; got {chosen!r}")
    return found


def replace_card_section(card: str, heading: str, body: str | None = None) -> str:
    """``card`` without its section under ``heading`` (up to the next ``## `` heading or the end), and with
    ``body`` under ``heading`` at the end unless it is None."""
    head, found, rest = card.partition(heading)
    if found:
        following = rest.find("\n## ")
        card = head + ("" if following < 0 else rest[following + 1:])
    card = card.rstrip() + "\n"
    return card if body is None else f"{card}\n{heading}\n\n{body.strip()}\n"


def without_default_sampling(config: dict[str, Any], card: str) -> tuple[dict[str, Any], str]:
    """A bundle's config and card without its default sampling, for a bundle derived from it (a new student or
    decoder): the default was set on the measurements of the parts it replaces."""
    if "default" not in config.get("sampling", {}):
        return config, card
    sampling = {k: v for k, v in config["sampling"].items() if k != "default"}
    return {**config, "sampling": sampling}, replace_card_section(card, DEFAULT_SECTION)


def set_default_sampling(url: str, sampler: str, steps: int, decoder: str, reason: str,
                         storage_options: StorageOptions = None) -> str:
    """Make ``sampler`` at ``steps`` with ``decoder`` the default sampling of the bundle at ``url``
    (config.json ``sampling.default``, with ``reason``: where the measurements that justify it are) and add a
    line saying so to its model card; returns the new model hash. The weights are rewritten byte for byte.
    Meant for whoever ships a bundle, once its student passed the gates it is held to (docs/benchmarks.md); a
    bundle derived from this one (`train distill`, `train tiny-decoder`) drops it (``without_default_sampling``).
    InputError if the bundle cannot sample that way at `generate`'s default guidance (an unknown sampler, no
    student or tiny decoder, steps out of range, a student with another guidance folded in)."""
    bundle = load_bundle(url, storage_options)
    if sampler not in SAMPLERS + STUDENT_SAMPLERS or steps < 1:
        raise InputError(f"sampler {sampler!r} at {steps} steps: expected one of "
                         f"{', '.join(SAMPLERS + STUDENT_SAMPLERS)} at >= 1 steps")
    check_student_sampler(bundle.config, sampler, steps, DEFAULT_GUIDANCE, bundle.url)
    check_decoder(bundle, decoder)
    config = bundle.saved_config()
    config["sampling"] = {**config.get("sampling", {}),
                          "default": {"sampler": sampler, "steps": steps, "decoder": decoder, "reason": reason}}
    card = replace_card_section(read_card(url, storage_options), DEFAULT_SECTION,
                                f"`synthgen generate` without `--sampler` uses `--sampler {sampler} --steps {steps} "
                                f"--decoder {decoder}` ({reason}).")
    return save_bundle(url, bundle.vae, bundle.unet, config, card, storage_options, student=bundle.student,
                       tiny_decoder=bundle.tiny_decoder)


def shipped_bundle_url(kind: str = "model") -> str:
    """Directory of a bundle shipped inside the package (``model`` or ``encoder``); InputError if absent."""
    path = importlib.resources.files("synthgen").joinpath("assets", kind)
    if not path.joinpath(CONFIG_FILE).is_file():
        raise InputError(f"no shipped {kind} is installed (expected {path}/{CONFIG_FILE}); "
                         "pass a bundle path or URL")
    return str(path)


def _config_for(cls: type, d: Any, key: str, url: str) -> Any:
    """Build a dataclass config from a dict, naming unknown or malformed keys."""
    if not isinstance(d, dict):
        raise InputError(f"{url}/{CONFIG_FILE}: '{key}' must be an object of {cls.__name__} fields")
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise InputError(f"{url}/{CONFIG_FILE}: '{key}' has unknown fields {sorted(unknown)}")
    return cls(**d)


def load_bundle(url: str | None = None, storage_options: StorageOptions = None) -> Bundle:
    """Load and verify a bundle (``url=None``: the shipped one). Modules are on CPU in eval mode."""
    url = shipped_bundle_url() if url is None else url
    config, model_hash = read_config(url, storage_options)
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise InputError(f"{url}/{CONFIG_FILE} is missing {', '.join(missing)}")
    embedder = config["embedder"]
    if not isinstance(embedder, dict) or not {"name", "dim"} <= set(embedder):
        raise InputError(f"{url}/{CONFIG_FILE}: 'embedder' must be {{name, dim}}, got {embedder!r}")

    vae = VAE(_config_for(VAEConfig, config["vae"], "vae", url))
    # bundles written before the heart-rate embedding existed have no such key and no such weights
    unet = UNet1D(_config_for(UNetConfig, {"hr_embedding": False, **config["unet"]}, "unet", url))
    if unet.cfg.cond_dim != embedder["dim"]:
        raise InputError(f"{url}/{CONFIG_FILE}: unet.cond_dim {unet.cfg.cond_dim} != embedder.dim "
                         f"{embedder['dim']}")
    student = None
    if "student" in config:  # a student of another width says so (``student.model``); older ones are the U-Net's
        model = config["student"].get("model") if isinstance(config["student"], dict) else None
        student = UNet1D(unet.cfg if model is None else _config_for(UNetConfig, model, "student.model", url))
        if (student.cfg.in_channels, student.cfg.cond_dim) != (unet.cfg.in_channels, unet.cfg.cond_dim):
            raise InputError(f"{url}/{CONFIG_FILE}: 'student.model' has in_channels {student.cfg.in_channels} and "
                             f"cond_dim {student.cfg.cond_dim}; expected the U-Net's {unet.cfg.in_channels} and "
                             f"{unet.cfg.cond_dim}")
    tiny = config.get("tiny_decoder")
    tiny_decoder = None
    if tiny is not None:
        tiny_cfg = _config_for(VAEConfig, tiny.get("model") if isinstance(tiny, dict) else None, "tiny_decoder.model",
                               url)
        fits = ("in_channels", "latent_channels", "channel_mult")  # the VAE's latents in, its ECG shape out
        if any(getattr(tiny_cfg, k) != getattr(vae.cfg, k) for k in fits):
            raise InputError(f"{url}/{CONFIG_FILE}: 'tiny_decoder.model' must have the VAE's {', '.join(fits)}")
        tiny_decoder = Decoder(tiny_cfg)
    modules = {"vae": vae, "unet": unet, "student": student, "tiny_decoder": tiny_decoder}
    for key, module in modules.items():
        if module is None:
            continue
        expected = config["files"].get(WEIGHT_FILES[key])
        if expected is None:
            raise InputError(f"{url}/{CONFIG_FILE} has no sha256 for {WEIGHT_FILES[key]}")
        load_weights(module, url, WEIGHT_FILES[key], expected, "model", storage_options)
    return Bundle(vae=vae.eval(), unet=unet.eval(), config=config, model_hash=model_hash, url=url,
                  student=None if student is None else student.eval(),
                  tiny_decoder=None if tiny_decoder is None else tiny_decoder.eval())
