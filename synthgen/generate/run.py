"""`synthgen generate`: sample ECGs for every manifest row with a pool of Ray actors, exactly once, resumably.

Order of events: validate arguments and every manifest row → hash the model → check ``out`` can be written
(``check_writable``: one line and nothing started when not) → write/compare ``_plan.json``
→ list committed shards → Ray Data ``map_batches`` over the pending shard ids (actor pool) → verify every
shard is committed → write ``_SUCCESS.json``. See docs/generate.md for why each step is there.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from synthgen.cluster import console, data_context, gpu_budget, ray_log_path, ray_session, torch_device
from synthgen.errors import InputError
from synthgen.generate.actor import ShardSampler
from synthgen.generate.config import GenerateConfig
from synthgen.generate.manifest import Spec, read_manifest, sample_counts, specs_fingerprint
from synthgen.generate.plan import Plan
from synthgen.io.generated import Provenance, committed_shards
from synthgen.io.paths import check_writable, join, read_json, resolve, write_json_atomic

if TYPE_CHECKING:
    from synthgen.conditions.embedders import PrecomputedEmbedder
    from synthgen.model.bundle import Bundle


def _planned(fs, root: str) -> dict:
    """The ``params`` of the _plan.json already under ``root`` ({} when there is none)."""
    path = join(root, "_plan.json")
    return read_json(fs, path).get("params", {}) if fs.exists(path) else {}


def _claim_out(fs, root: str, plan_doc: dict, old: dict) -> None:
    """Write _plan.json, or check that the one already there (its params: ``old``, {} when there is none)
    describes the same run (never mix two runs)."""
    path = join(root, "_plan.json")
    if old:
        new = plan_doc["params"]
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            changes = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            hint = ("; without --sampler a model samples with its default sampling (the shipped model's is now lcm, "
                    "2 steps, tiny decoder; it was dpm++sde-20, vae): pass that run's --sampler, --steps and "
                    "--decoder" if {"sampler", "steps", "decoder"} & set(diff) else "")
            if "model_hash" in diff:
                hint += "; and its model (a changed bundle, even only its config.json, is another model)"
            raise InputError(f"{path} belongs to a run with different parameters ({changes}): use a new --out, or "
                             f"the same parameters to resume that run{hint}")
    else:
        write_json_atomic(fs, path, plan_doc)


def _actor_resources(ray, actors: int | None, gpu: bool | None, pending: int) -> tuple[dict, dict, str, int | None]:
    """(actor pool, per-actor resources, torch device, torch threads): GPU actors, else CPU actors.

    GPU actors: one GPU each, up to ``actors`` or the GPU budget (cluster GPUs now or SYNTHGEN_MAX_GPUS, see
    synthgen.cluster), all requested at once so the autoscaler starts the nodes they wait for; the pool runs
    as soon as one of them is placed.
    """
    gpus = gpu_budget(ray, gpu)
    if gpus:
        size = max(1, min(actors or gpus, pending))
        return dict(min_size=1, max_size=size, initial_size=size), {"num_gpus": 1, "num_cpus": 1}, \
            torch_device(True), None
    cpus = float(ray.cluster_resources().get("CPU", 1))
    size = max(1, min(actors or int(cpus) // 2, pending))
    # fractional CPUs: half the logical CPUs stay free for Ray Data's own tasks (the 2-CPU deadlock);
    # torch threads share this host's cores (a local Ray has twice as many logical CPUs as cores)
    threads = max(1, min(os.cpu_count() or 1, int(cpus)) // size)
    return dict(size=size), {"num_cpus": min(1.0, cpus / (2 * size))}, torch_device(False), threads


def generate(manifest: str, out: str, n: int | None = None, **settings: Any) -> dict:
    """`run_generate` for library callers: ``settings`` are the other fields of GenerateConfig."""
    return run_generate(GenerateConfig(manifest, out, n, **settings))


def run_generate(config: GenerateConfig) -> dict:
    """Generate ECGs for a manifest into ``config.out``; resumable and exactly-once per (spec, sample). Returns
    the summary.

    Every ECG is checked for plausibility (synthgen.data.plausibility) and flagged per row; with
    ``replace_implausible`` = k > 0 an implausible sample is redrawn from the next seeds of its own seed
    stream, up to k times (deterministic, so exactly-once holds)."""
    # torch: not for `synthgen --help`
    from synthgen.model.bundle import check_decoder, default_sampling, load_bundle
    from synthgen.model.consistency import check_student_sampler

    config.check()
    out, storage_options = config.out, config.storage_options
    specs = read_manifest(config.manifest, storage_options)
    counts = sample_counts(specs, config.n)
    bundle = load_bundle(config.model, storage_options)  # on the driver: its hash, and a bad model fails here
    config = config.with_defaults(default_sampling(bundle.config))
    check_student_sampler(bundle.config, config.sampler, config.steps, config.guidance, bundle.url)
    check_decoder(bundle, config.decoder)
    check_writable(out, storage_options)  # every input is valid: now the output, before Ray starts
    fs, root = resolve(out, storage_options)
    planned = _planned(fs, root)
    if config.shard_size is None:  # resuming: keep the shard size the run started with (the default may change)
        config = replace(config, shard_size=planned.get("shard_size"))
    params = config.plan_params(specs_fingerprint(specs), hashlib.sha256(json.dumps(counts).encode()).hexdigest(),
                                sum(counts), bundle.model_hash)
    run_id = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    plan = Plan(tuple(counts), config.seed, params["shard_size"])
    _claim_out(fs, root, {"run_id": run_id, "params": params, "manifest": config.manifest,
                          "n_shards": plan.n_shards, "created": datetime.now(timezone.utc).isoformat()}, planned)
    done = committed_shards(fs, root, config.output_format)
    pending = [k for k in range(plan.n_shards) if k not in done]
    summary_path = join(root, "_SUCCESS.json")
    if not pending and fs.exists(summary_path):
        return {**read_json(fs, summary_path), "shards_written": 0, "samples_written": 0}

    t0 = time.perf_counter()
    rows, ray_log = [], None
    if pending:
        embedder = embed_prompts(bundle, specs, config)
        rows, ray_log = _run_pool(config, plan, pending, specs, config.provenance(run_id, params["model_hash"]),
                                  embedder, done_samples=plan.total - sum(plan.shard_sizes()[k] for k in pending))
    wall = time.perf_counter() - t0
    missing = sorted(set(range(plan.n_shards)) - committed_shards(fs, root, config.output_format))
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) not committed after the run (first: {missing[:5]}); rerun "
                           "the same command to write only those")
    written = [r for r in rows if r["written"]]
    sample_s, write_s = sum(r["sample_s"] for r in written), sum(r["write_s"] for r in written)
    samples_written = sum(r["samples"] for r in written)
    summary = {
        "run_id": run_id, "out": out, "params": params, "total_samples": plan.total, "n_shards": plan.n_shards,
        "shards_written": len(written), "shards_already_done": len(done), "samples_written": samples_written,
        "wall_s": round(wall, 3), "ecg_per_s": round(samples_written / wall, 3) if wall > 0 else None,
        "actor_sample_s": round(sample_s, 3), "actor_write_s": round(write_s, 3),
        "write_share": round(write_s / (sample_s + write_s), 4) if written else None,
        "implausible_written": sum(r["implausible"] for r in written),
        "replaced": sum(r["replaced"] for r in written),
        "hosts": sorted({r["host"] for r in rows}), "devices": sorted({r["device"] for r in rows}),
        "finished": datetime.now(timezone.utc).isoformat(),
    }
    write_json_atomic(fs, summary_path, summary)
    if config.progress:
        print(f"generated {samples_written} ECGs in {wall:.1f} s ({summary['ecg_per_s']} ECG/s; "
              f"{len(done)} shard(s) were already done); writing took {100 * (summary['write_share'] or 0):.1f} % "
              f"of actor time; {summary['implausible_written']} flagged implausible, {summary['replaced']} "
              f"redrawn → {out}" + (f"\nRay's log: {ray_log}" if ray_log else ""))
    return summary


def embed_prompts(bundle: Bundle, specs: list[Spec], config: GenerateConfig) -> PrecomputedEmbedder:
    """Each unique report prompt of ``specs`` embedded once, here on the driver, with the bundle's embedder (and
    the driver's embedding cache): the actors get the vectors and never load a text model."""
    from synthgen.conditions.embedders import PrecomputedEmbedder, get_embedder
    from synthgen.conditions.patient import report_prompts

    try:
        prompts = report_prompts([s.condition for s in specs])
    except ValueError as err:  # "condition i: ..." — i is the spec id (its manifest row)
        raise InputError(f"--manifest {config.manifest}: {err}") from None
    unique = list(dict.fromkeys(prompts))
    name = bundle.config["embedder"]["name"]
    if config.progress:
        print(f"embedding {len(unique)} unique report prompt(s) with {name}", file=console(), flush=True)
    return PrecomputedEmbedder.of(get_embedder(name, storage_options=config.storage_options), unique)


def _run_pool(config: GenerateConfig, plan: Plan, pending: list[int], specs: list[Spec], prov: Provenance,
              embedder: PrecomputedEmbedder, done_samples: int) -> tuple[list[dict], str | None]:
    """Run the pending shards through an actor pool; returns the per-shard summary rows and the file that
    received Ray's lines (None when they went to the console)."""
    from tqdm import tqdm

    with ray_session() as ray:
        pool, resources, device, threads = _actor_resources(ray, config.actors, config.gpu, len(pending))
        # quiet Ray Data's own progress bars while ours runs; let a failing actor's own exception reach the driver
        # (by default Ray Data replaces it by a UserCodeException holding only its traceback as text, so a storage
        # failure could not be reported as one line)
        with data_context(enable_progress_bars=False, print_on_execution_start=False,
                          raise_original_map_exception=True), \
                tqdm(total=plan.total, initial=done_samples, unit="ECG", disable=not config.progress, smoothing=0.1,
                     desc="generate", file=console()) as bar:
            ds = ray.data.from_items([{"shard": k} for k in pending], override_num_blocks=len(pending))
            # A killed actor is restarted and its shard retried by Ray Data's actor-pool defaults
            # (max_restarts=-1, max_task_retries=-1); setting them goes through **ray_remote_args, deprecated
            # in Ray 2.60 and removed in 2.64, so we rely on the defaults (tested by killing an actor).
            ds = ds.map_batches(
                ShardSampler, batch_size=1, compute=ray.data.ActorPoolStrategy(**pool),
                fn_constructor_kwargs=dict(config=config, plan=plan, specs=specs, prov=prov, device=device,
                                           threads=threads, embedder=embedder),
                **resources)
            rows = []
            for row in ds.iter_rows():
                rows.append(row)
                bar.update(int(row["samples"]))
        return rows, ray_log_path()
