"""The `synthgen` command: parses arguments and calls one library function per command, nothing else.

Heavy libraries (torch, ray, diffusers) are imported inside the commands so `synthgen --help` is instant.
Errors are mapped once, for every command, in ``_Commands.invoke``: bad input (``InputError``) → one line,
exit 2; storage, network, credential and permission failures (``synthgen.errors.outside_failure``) → one line
naming the target and the cause, exit 1; ``synthgen --debug …`` prints the traceback as well. Anything else is
a bug and keeps its traceback.

Every command also takes ``--config FILE`` (``ConfigOpt``): a YAML mapping whose keys are the command's
option names, which flags on the command line override. It is the one front door for `ray job submit` too:
``-- synthgen generate --config jobs/configs/generate.yaml`` or the one-line wrappers in jobs/ (``job``).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from enum import Enum
from typing import Optional

import click
import typer
from typer.core import TyperGroup

from synthgen.errors import InputError, outside_failure
from synthgen.model.schedulers import DEFAULT_GUIDANCE, DEFAULT_STEPS


class _Commands(TyperGroup):
    """The root command group: every subcommand runs inside ``invoke``, so its errors are mapped here."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InputError as e:
            _fail(ctx, e, f"error: {e}", 2)
        except Exception as e:
            line = outside_failure(e)
            if line is None:
                raise
            _fail(ctx, e, f"error: {line}", 1, hint=" (rerun as `synthgen --debug …` for the traceback)")


SECRET_OPTIONS = ("key", "secret", "token")  # never in a --config file: it is checked in


def _option_keys(command: click.Command) -> dict[str, str]:
    """YAML key → parameter name for every option of ``command``: the long flag without its dashes
    (``--batch-size`` → ``batch-size``, ``--format`` → ``format``; for ``--gpu/--cpu`` the key is ``gpu``)."""
    keys = {}
    for param in command.params:
        if param.param_type_name == "option" and param.name != "config":
            long = next((o for o in param.opts if o.startswith("--")), None)
            if long:
                keys[long[2:]] = param.name
    return keys


def _yaml_value(value: object) -> object:
    """A YAML value as the option's command-line text would give it: a mapping as JSON (``--storage-options``),
    a list comma-separated (``--task``, ``--ratios``, ``--peers``); anything else as it is."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def _read_config(ctx: typer.Context, path: Optional[str]) -> Optional[str]:
    """``--config FILE``: its keys become the command's defaults (``ctx.default_map``), so a flag given on the
    command line wins and an option given nowhere keeps its own default. Eager: runs before the other options."""
    if path is None:
        return None
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"--config {path}: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict):
        raise InputError(f"--config {path}: expected a mapping of option names (e.g. batch-size: 64)")
    keys = _option_keys(ctx.command)
    for key in doc:
        if key not in keys:
            raise InputError(f"--config {path}: unknown key {key!r} (not an option of `{ctx.command_path}`); "
                             f"known: {', '.join(keys)}")
    secrets = sorted(set(doc.get("storage-options") or {}) & set(SECRET_OPTIONS))
    if secrets:
        raise InputError(f"--config {path}: storage-options.{secrets[0]}: credentials do not belong in a config "
                         "file; use AWS_* environment variables, ~/.aws/config or --storage-options")
    ctx.default_map = {**(ctx.default_map or {}),
                       **{keys[k]: _yaml_value(v) for k, v in doc.items() if v is not None}}
    return path


ConfigOpt = typer.Option(None, "--config", metavar="FILE", is_eager=True, callback=_read_config,
                         help="YAML file of option values (keys = option names, e.g. batch-size: 64); "
                              "flags override it.")


def job(command: str) -> None:
    """Entry point of the jobs/ wrappers: ``python jobs/X.py ARGS`` runs ``synthgen COMMAND ARGS`` — the same
    options, ``--config``, one-line errors and exit codes (``SYNTHGEN_DEBUG=1`` adds the traceback)."""
    sys.argv = ["synthgen", *command.split(), *sys.argv[1:]]  # also what `train` records as its command
    app(prog_name="synthgen")


def _fail(ctx: click.Context, error: BaseException, line: str, code: int, hint: str = "") -> None:
    debug = bool(ctx.params.get("debug"))
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    typer.secho(line if debug else line + hint, err=True, fg=typer.colors.RED)
    raise typer.Exit(code=code) from None


app = typer.Typer(cls=_Commands, help="Synthetic 12-lead ECGs from clinical reports and patient info, at batch "
                  "scale.", no_args_is_help=True, pretty_exceptions_enable=False)
prepare_app = typer.Typer(help="Turn a PhysioNet dataset (WFDB + CSV) into training shards (Parquet).",
                          no_args_is_help=True)
train_app = typer.Typer(help="Train the VAE, then the latent diffusion model, with Ray Train.", no_args_is_help=True)
manifest_app = typer.Typer(help="Build condition manifests for `synthgen generate`.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")
app.add_typer(train_app, name="train")
app.add_typer(manifest_app, name="manifest")


def _storage_options(value: Optional[str]) -> Optional[dict]:
    if not value:
        return None
    try:
        opts = json.loads(value)
    except json.JSONDecodeError as e:
        raise InputError(f"--storage-options: expected a JSON object, got {value!r} ({e})") from e
    if not isinstance(opts, dict):
        raise InputError(f"--storage-options: expected a JSON object, got {value!r}")
    return opts


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", envvar="SYNTHGEN_DEBUG",
                                        help="On an error, print the full traceback too."),
             verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own log lines on the console too "
                                                                   "(by default they go to a log file).")
             ) -> None:
    """Synthetic 12-lead ECGs from clinical reports and patient info, at batch scale."""
    if verbose:
        from synthgen.cluster import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"  # read by synthgen.cluster.ray_session, here or in a `ray job` entry point


StorageOpt = typer.Option(None, "--storage-options", help="JSON object passed to fsspec/s3fs (endpoint, key…).")


# ---------------------------------------------------------------------------------------------- prepare
@prepare_app.command("ptbxl")
def prepare_ptbxl(
    src: str = typer.Option(..., help="PTB-XL folder in PhysioNet's layout (ptbxl_database.csv, records100/…)."),
    out: str = typer.Option(..., help="Output folder or s3:// URL for the shards."),
    workers: Optional[int] = typer.Option(None, help="Parallel workers (default: all CPUs)."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    from synthgen.data.prepare import prepare

    prepare("ptbxl", src, out, workers=workers, storage_options=_storage_options(storage_options))


@prepare_app.command("mimic-iv-ecg")
def prepare_mimic(
    src: str = typer.Option(..., help="MIMIC-IV-ECG folder (record_list.csv, machine_measurements.csv, files/…)."),
    out: str = typer.Option(..., help="Output folder or s3:// URL for the shards."),
    patients: Optional[str] = typer.Option(None, help="MIMIC-IV hosp/patients.csv(.gz) for age and sex."),
    workers: Optional[int] = typer.Option(None, help="Parallel workers (default: all CPUs)."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    from synthgen.data.prepare import prepare

    prepare("mimic-iv-ecg", src, out, patients=patients, workers=workers,
            storage_options=_storage_options(storage_options))


@prepare_app.command("wfdb")
def prepare_wfdb(
    src: str = typer.Option(..., help="Folder of WFDB records (.hea/.dat), searched recursively."),
    metadata: str = typer.Option(..., help="CSV/Parquet table: record, report(s), age, sex[, hr, patient_id]."),
    out: str = typer.Option(..., help="Output folder or s3:// URL for the shards."),
    workers: Optional[int] = typer.Option(None, help="Parallel workers (default: all CPUs)."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    from synthgen.data.prepare import prepare

    prepare("wfdb", src, out, metadata=metadata, workers=workers,
            storage_options=_storage_options(storage_options))


@prepare_app.command("physionet-challenge")
def prepare_physionet_challenge(
    src: str = typer.Option(..., help="PhysioNet/CinC Challenge 2020/2021 records (.hea + .mat with #Age, #Sex, "
                                      "#Dx SNOMED CT codes), searched recursively."),
    out: str = typer.Option(..., help="Output folder or s3:// URL for the shards."),
    workers: Optional[int] = typer.Option(None, help="Parallel workers (default: all CPUs)."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    from synthgen.data.prepare import prepare

    prepare("physionet-challenge", src, out, workers=workers, storage_options=_storage_options(storage_options))


# ------------------------------------------------------------------------------------------------ train
def _train(stage: str, data: str, out: str, preset: str, workers: int, gpu: Optional[bool], embedder: str,
           cache: Optional[str], seed: int, storage_options: Optional[str]) -> None:
    import sys

    from synthgen.io.paths import shown_command
    from synthgen.train.run import TrainRunConfig, run_train

    url = run_train(TrainRunConfig(stage, data, out, preset=preset, workers=workers, gpu=gpu, embedder=embedder,
                                   cache=cache, seed=seed, storage_options=_storage_options(storage_options),
                                   command=shown_command("synthgen", sys.argv[1:])))
    typer.echo(url)


DataOpt = typer.Option(..., "--data", help="Training shards from `synthgen prepare` (folder or s3:// URL).")
OutOpt = typer.Option(..., "--out", help="Run folder or s3:// URL: checkpoints, the VAE, the model bundle.")
PresetOpt = typer.Option("small", help="small (2-core CPU, <1 h), paper (GPU sizes) or tiny (smoke test).")
WorkersOpt = typer.Option(1, help="Ray Train workers (DDP).")
GpuOpt = typer.Option(None, "--gpu/--cpu", help="One GPU per worker, or CPU workers (default: GPUs if the "
                                                    "Ray cluster has or can add any).")
EmbedderOpt = typer.Option("local", help="Text embedder: local (offline MiniLM) or openai[:model].")
CacheOpt = typer.Option(None, help="Embedding cache folder or URL (default ~/.cache/synthgen/embeddings).")
SeedOpt = typer.Option(0, help="Random seed.")


@train_app.command("vae")
def train_vae(data: str = DataOpt, out: str = OutOpt, preset: str = PresetOpt, workers: int = WorkersOpt,
              gpu: Optional[bool] = GpuOpt, embedder: str = EmbedderOpt, cache: Optional[str] = CacheOpt,
              seed: int = SeedOpt, storage_options: Optional[str] = StorageOpt,
              config: Optional[str] = ConfigOpt) -> None:
    """Stage 1: the VAE. Rerun the same command to resume after a kill."""
    _train("vae", data, out, preset, workers, gpu, embedder, cache, seed, storage_options)


@train_app.command("diffusion")
def train_diffusion(data: str = DataOpt, out: str = OutOpt, preset: str = PresetOpt, workers: int = WorkersOpt,
                    gpu: Optional[bool] = GpuOpt, embedder: str = EmbedderOpt, cache: Optional[str] = CacheOpt,
                    seed: int = SeedOpt, storage_options: Optional[str] = StorageOpt,
              config: Optional[str] = ConfigOpt) -> None:
    """Stage 2: the latent diffusion model (needs the stage-1 VAE in --out). Writes OUT/bundle."""
    _train("diffusion", data, out, preset, workers, gpu, embedder, cache, seed, storage_options)


@train_app.command("all")
def train_all(data: str = DataOpt, out: str = OutOpt, preset: str = PresetOpt, workers: int = WorkersOpt,
              gpu: Optional[bool] = GpuOpt, embedder: str = EmbedderOpt, cache: Optional[str] = CacheOpt,
              seed: int = SeedOpt, storage_options: Optional[str] = StorageOpt,
              config: Optional[str] = ConfigOpt) -> None:
    """Both stages; finished stages are skipped, a killed one resumes."""
    _train("all", data, out, preset, workers, gpu, embedder, cache, seed, storage_options)


@train_app.command("distill")
def train_distill(data: str = DataOpt,
                  out: str = typer.Option(..., "--out", help="Run folder or s3:// URL: checkpoints and the "
                                                             "distilled bundle (OUT/distilled)."),
                  teacher: Optional[str] = typer.Option(None, help="Teacher bundle folder or URL, v-prediction "
                                                                   "(default: the shipped model)."),
                  method: str = typer.Option("lcd", help="lcd: Latent Consistency Distillation of the teacher; "
                                                         "dmd: Distribution Matching Distillation of the teacher "
                                                         "bundle's one-step student (a bundle from lcd); "
                                                         "regress: a narrower, faster student regressed onto the "
                                                         "bundle's student."),
                  preset: str = PresetOpt, workers: int = WorkersOpt, gpu: Optional[bool] = GpuOpt,
                  cache: Optional[str] = CacheOpt, seed: int = SeedOpt,
                  epochs: Optional[int] = typer.Option(None, help="Epochs (default: the preset's)."),
                  batch_size: Optional[int] = typer.Option(None, help="Batch size (default: the preset's)."),
                  storage_options: Optional[str] = StorageOpt, config: Optional[str] = ConfigOpt) -> None:
    """Stage 3: distil a teacher into a 1–4 step student (guidance folded in) for `generate --sampler lcm`:
    Latent Consistency Distillation, then optionally a narrower student regressed onto it and Distribution
    Matching Distillation of its one-step sampling. Rerun the same command to resume after a kill."""
    from synthgen.io.paths import shown_command
    from synthgen.train.distill_stage import distill

    typer.echo(distill(data, out, teacher=teacher, method=method, preset=preset, workers=workers, gpu=gpu,
                       cache=cache, seed=seed, storage_options=_storage_options(storage_options), epochs=epochs,
                       batch_size=batch_size, command=shown_command("synthgen", sys.argv[1:])))


@train_app.command("tiny-decoder")
def train_tiny_decoder(data: str = DataOpt,
                       out: str = typer.Option(..., "--out", help="Run folder or s3:// URL: checkpoints and the "
                                                                  "bundle with the tiny decoder "
                                                                  "(OUT/with-tiny-decoder)."),
                       teacher: Optional[str] = typer.Option(None, help="Bundle whose VAE decoder to distil "
                                                                        "(default: the shipped model)."),
                       preset: str = PresetOpt, workers: int = WorkersOpt, gpu: Optional[bool] = GpuOpt,
                       cache: Optional[str] = CacheOpt, seed: int = SeedOpt,
                       epochs: Optional[int] = typer.Option(None, help="Epochs (default: the preset's)."),
                       batch_size: Optional[int] = typer.Option(None, help="Batch size (default: the preset's)."),
                       storage_options: Optional[str] = StorageOpt, config: Optional[str] = ConfigOpt) -> None:
    """Stage 4: distil the bundle's VAE decoder into a narrower, faster one for `generate --decoder tiny` (the
    same latents; the bundle's U-Net and student are kept). Rerun the same command to resume after a kill."""
    from synthgen.io.paths import shown_command
    from synthgen.train.tiny_decoder_stage import train_tiny_decoder as run

    typer.echo(run(data, out, teacher=teacher, preset=preset, workers=workers, gpu=gpu, cache=cache, seed=seed,
                   storage_options=_storage_options(storage_options), epochs=epochs, batch_size=batch_size,
                   command=shown_command("synthgen", sys.argv[1:])))


# --------------------------------------------------------------------------------------------- generate
class OutputFormat(str, Enum):
    parquet = "parquet"
    wfdb = "wfdb"
    both = "both"


@app.command()
def generate(
    manifest: str = typer.Option(..., help="Condition specs (CSV or Parquet; local or s3://). See docs/generate.md."),
    out: str = typer.Option(..., help="Output folder or s3:// URL."),
    n: Optional[int] = typer.Option(None, help="Total ECGs, spread over rows by n/weight or evenly "
                                               "(default: the manifest's n column, else 1 per row)."),
    model: Optional[str] = typer.Option(None, help="Model bundle folder or URL (default: the shipped model)."),
    sampler: Optional[str] = typer.Option(None, help="lcm (the distilled student, 1-4 steps), dpm++sde "
                                                     "(stochastic DPM-Solver++, the teacher's best), ddpm "
                                                     "(ancestral, the paper's), ddim or dpm++ (deterministic). "
                                                     "Default: the model's default sampling, steps and decoder "
                                                     "(the shipped model: lcm, 2 steps, tiny decoder; a model "
                                                     "without one: dpm++sde, 20 steps, vae). See "
                                                     "docs/benchmarks.md."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model's default, or with "
                                                   "--sampler that sampler's own — "
                                                   f"{', '.join(f'{k} {v}' for k, v in DEFAULT_STEPS.items())}; "
                                                   "the paper's DDPM uses 1000)."),
    guidance: float = typer.Option(DEFAULT_GUIDANCE, help="Classifier-free guidance scale (1 = none)."),
    seed: int = typer.Option(0, help="Run seed; each sample's seed derives from (seed, spec, index)."),
    batch_size: int = typer.Option(128, help="ECGs per forward pass in each actor."),
    actors: Optional[int] = typer.Option(None, help="Sampler actors (default: one per GPU the cluster has or can "
                                                    "add, else one per 2 CPUs)."),
    shard_size: Optional[int] = typer.Option(None, help="ECGs per output shard (the unit of work and of resume; "
                                                        "default: total / 16, within 16-256)."),
    output_format: OutputFormat = typer.Option(OutputFormat.parquet, "--format", help="parquet, wfdb or both."),
    wfdb_fs: Optional[float] = typer.Option(None, help="WFDB sampling rate (default 102.4 Hz; e.g. 500)."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="One actor per GPU, or CPU actors (default: "
                                                               "GPUs if the Ray cluster has or can add any)."),
    precision: str = typer.Option("fp32", help="fp32, or fp16/bf16: the networks under autocast (for GPUs; fp16 "
                                               "needs one)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    replace_implausible: int = typer.Option(0, help="Redraw an implausible ECG (flat, no measurable HR, far "
                                                     "from the requested HR, …) up to this many times from the "
                                                     "next seeds of its own stream; every row is flagged anyway."),
    decoder: Optional[str] = typer.Option(None, help="vae (the VAE's decoder), or tiny: the bundle's tiny "
                                                     "decoder (`synthgen train tiny-decoder`), faster, close to "
                                                     "the VAE's (default: the model's default with no --sampler, "
                                                     "else vae)."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    """Sample ECGs for every condition spec of a manifest with Ray actors; resumable, exactly once."""
    from synthgen.generate.config import GenerateConfig
    from synthgen.generate.run import run_generate

    run_generate(GenerateConfig(manifest, out, n, model=model, sampler=sampler, steps=steps, guidance=guidance,
                                seed=seed, batch_size=batch_size, actors=actors, shard_size=shard_size,
                                output_format=output_format.value, wfdb_fs=wfdb_fs, gpu=gpu, precision=precision,
                                progress=progress, replace_implausible=replace_implausible, decoder=decoder,
                                storage_options=_storage_options(storage_options)))


@manifest_app.command("minority")
def manifest_minority(
    data: str = typer.Option(..., help="Training shards from `synthgen prepare`."),
    label: str = typer.Option(..., help="af, pvc or abnormal."),
    out: str = typer.Option(..., help="Manifest to write (.csv or .parquet; local or s3://)."),
    split: str = typer.Option("train", help="Split whose records' conditions are used."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    """A manifest from the conditions of real minority-class records (as the paper augments)."""
    from synthgen.generate.manifest import build_minority_manifest

    rows = build_minority_manifest(data, label, out, split=split,
                                   storage_options=_storage_options(storage_options))
    typer.echo(f"{rows} condition specs → {out}")


@manifest_app.command("split")
def manifest_split(
    data: str = typer.Option(..., help="Training shards from `synthgen prepare`."),
    split: str = typer.Option("test", help="Split whose records' conditions are used (train, val, test)."),
    out: str = typer.Option(..., help="Manifest to write (.csv or .parquet; local or s3://)."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    """A manifest of every record's conditions in a split: generate on the test conditions, then evaluate."""
    from synthgen.generate.manifest import class_conditions, write_manifest

    opts = _storage_options(storage_options)
    rows = class_conditions(data, None, split=split, storage_options=opts)
    write_manifest(rows, out, opts)
    typer.echo(f"{len(rows)} condition specs → {out}")


@manifest_app.command("describe")
def manifest_describe(
    conditions: Optional[list[str]] = typer.Argument(None, help="Condition name(s), e.g. \"Brugada syndrome\" "
                                                                "hyperkalemia LQTS."),
    out: Optional[str] = typer.Option(None, help="Manifest to write (.csv or .parquet; local or s3://)."),
    source: str = typer.Option("curated", help="curated (the shipped table, offline) or openai (a chat model; "
                                               "OPENAI_API_KEY)."),
    model: Optional[str] = typer.Option(None, help="Chat model for --source openai (default gpt-4o-mini)."),
    age: Optional[float] = typer.Option(None, help="Patient age in years (default: unknown)."),
    sex: Optional[str] = typer.Option(None, help="M or F (default: unknown)."),
    hr: Optional[float] = typer.Option(None, help="Heart rate in bpm (default: the condition's typical HR "
                                                  "where it implies one, else unknown)."),
    n: int = typer.Option(10, help="ECGs per condition (the manifest's n column)."),
    cache: Optional[str] = typer.Option(None, help="Cache folder for chat replies and text embeddings "
                                                   "(default $SYNTHGEN_CACHE or ~/.cache/synthgen/embeddings)."),
    vocabulary: bool = typer.Option(True, "--vocabulary/--no-vocabulary", help="Show each finding's nearest "
                                    "training statements (loads the local text embedder, ~7 s)."),
    list_: bool = typer.Option(False, "--list", help="List the curated conditions and exit."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    """Stage 1 for rare conditions: describe each condition as ECG findings into a manifest to review, edit,
    then `synthgen generate` (the paper's two-stage flow). See docs/describe.md."""
    from synthgen.conditions.describe import curated_conditions, describe_summary, nearest_statements
    from synthgen.conditions.embedders import get_embedder
    from synthgen.generate.manifest import build_describe_manifest

    if list_:
        for c in curated_conditions():
            hr_text = f", typical HR {c.typical_hr:g} bpm" if c.typical_hr is not None else ""
            typer.echo(f"{c.condition} [{c.category}{hr_text}] — also: {'; '.join(c.aliases)}")
        return
    if not conditions or not out:
        raise InputError("name at least one condition and --out (or --list)")
    descriptions = build_describe_manifest(conditions, out, source=source, model=model, age=age, sex=sex,
                                           hr=hr, n=n, cache=cache, storage_options=_storage_options(storage_options))
    matches = None
    if vocabulary:
        embedder = get_embedder("local", cache=cache)
        matches = [nearest_statements(d.findings, embedder) for d in descriptions]
    typer.echo(describe_summary(descriptions, hr, matches))
    typer.echo(f"{len(descriptions)} condition spec(s) → {out}; review and edit the findings, then "
               f"`synthgen generate --manifest {out} --out …`")


@train_app.command("encoder")
def train_encoder(data: str = DataOpt,
                  out: str = typer.Option(..., "--out", help="Encoder bundle folder or s3:// URL."),
                  epochs: int = typer.Option(20, help="Training epochs (the best on the validation split is kept)."),
                  embedder: str = EmbedderOpt, cache: Optional[str] = CacheOpt, seed: int = SeedOpt,
                  storage_options: Optional[str] = StorageOpt, config: Optional[str] = ConfigOpt) -> None:
    """The Net1D ECG/report encoder (CLIP-style) that `synthgen evaluate` measures with."""
    from synthgen.evaluate.encoder import train_encoder as run_train_encoder

    model_hash = run_train_encoder(data, out, epochs=epochs, embedder=embedder, cache=cache, seed=seed,
                                   storage_options=_storage_options(storage_options))
    typer.echo(f"encoder {model_hash} → {out}")


# --------------------------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    real: str = typer.Option(..., help="Real training shards (from `synthgen prepare`)."),
    generated: str = typer.Option(..., help="A `synthgen generate` output folder or URL."),
    out: str = typer.Option(..., help="Folder for evaluation.json and report.html."),
    encoder: Optional[str] = typer.Option(None, help="Encoder bundle from `synthgen train encoder` (default: the "
                                                     "shipped one, trained on the PTB-XL subset)."),
    split: str = typer.Option("test", help="Real split the generated set is compared with."),
    peers: str = typer.Option("ecgsyn,deepfake-ecg", help="Comma-separated peers run on the generated set's "
                                                          "conditions and scored beside it ('' = none)."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    """The benchmark: FID, precision/recall/F1, HR MAE, CLIP score, validity, memorisation — beside references."""
    from synthgen.evaluate.run import evaluate as run_evaluate

    run_evaluate(real, generated, out, encoder=encoder, split=split,
                 peers=[p.strip() for p in peers.split(",") if p.strip()],
                 storage_options=_storage_options(storage_options))


# ----------------------------------------------------------------------------------------- augment-eval
@app.command("augment-eval")
def augment_eval(
    data: str = typer.Option(..., help="Prepared shards with train/val/test splits (`synthgen prepare`)."),
    out: str = typer.Option(..., help="Folder or s3:// URL for trials, summary table, plot and provenance."),
    task: str = typer.Option("af,pvc,abnormal", help="Comma-separated tasks: af, pvc, abnormal."),
    synthetic: Optional[str] = typer.Option(None, help="A `synthgen generate` output to draw synthetic ECGs from "
                                                       "(default: generate them from the training conditions)."),
    external: Optional[str] = typer.Option(None, help="Prepared shards from another source (e.g. `synthgen prepare "
                                                      "physionet-challenge`): every trained model also scores all "
                                                      "of its rows."),
    seeds: int = typer.Option(3, help="Trials per arm (training seeds); mean ± sd over them."),
    epochs: int = typer.Option(20, help="Budget: passes over the real training split, as steps, for every arm."),
    batch_size: int = typer.Option(64, help="Training batch size of every trial."),
    ratios: str = typer.Option("0.25,0.5,1", help="Synthetic : real minority-class ECGs, one augmented arm each."),
    n_synthetic: int = typer.Option(300, help="ECGs per class to generate when --synthetic is not given."),
    model: Optional[str] = typer.Option(None, help="Model bundle for generating (default: the shipped model)."),
    sampler: Optional[str] = typer.Option(None, help="Sampler for generating: lcm, dpm++sde, ddpm, ddim or dpm++ "
                                                     "(default: the model's default sampling, as in `generate`)."),
    sampler_steps: Optional[int] = typer.Option(None, help="Denoising steps for generating (default: as in "
                                                           "`generate`)."),
    decoder: Optional[str] = typer.Option(None, help="Latent decoder for generating: vae or tiny (default: as in "
                                                     "`generate`)."),
    seed: int = typer.Option(0, help="Seed of the synthetic set, of the rows the augmented arms add and of the "
                                     "bootstrap."),
    bootstrap: int = typer.Option(2000, help="Bootstrap replicates of the paired 95 % intervals."),
    gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="Trials and sampling on GPUs (default: "
                                                               "if the Ray cluster has or can add any)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    storage_options: Optional[str] = StorageOpt,
    config: Optional[str] = ConfigOpt,
) -> None:
    """The downstream experiment: Net1D classifiers on original vs weighted-loss vs synthetic-augmented data, each
    arm's paired difference from the original with a 95 % interval and a verdict."""
    from classifiers.experiment import augment_eval as run_augment_eval

    tasks = [t.strip() for t in task.split(",") if t.strip()]
    try:
        ratio_list = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise InputError(f"--ratios {ratios!r}: expected comma-separated numbers, e.g. 0.25,0.5,1") from None
    run_augment_eval(data, out, tasks=tasks, synthetic=synthetic, external=external, seeds=seeds, epochs=epochs,
                     batch_size=batch_size, ratios=ratio_list, n_synthetic=n_synthetic, model=model, sampler=sampler,
                     sampler_steps=sampler_steps, decoder=decoder, seed=seed, bootstrap=bootstrap, gpu=gpu,
                     progress=progress, storage_options=_storage_options(storage_options))


@app.command()
def plot(
    src: str = typer.Option(..., help="A Parquet file/folder (training shards or generate output) or a WFDB "
                                      "record path without extension."),
    out: str = typer.Option(..., help="Image to write: .png or .pdf."),
    row: int = typer.Option(0, help="Row of the Parquet data to draw."),
    config: Optional[str] = ConfigOpt,
) -> None:
    """Draw one ECG on the standard 12-lead paper grid, captioned with its report and patient info."""
    from synthgen.evaluate.plot import plot_source

    caption = plot_source(src, out, row=row)
    typer.echo(f"{out}\n{caption}")
