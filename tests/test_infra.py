"""Scale-out files (issue 7): cluster configs, KubeRay manifests, Dockerfiles and the Ray job entry points.

Fast and offline: no cluster, no image build. The schemas below are what `infra/` promises; see
docs/scale-out.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from synthgen.cli import _option_keys, app
from synthgen.errors import InputError

REPO = Path(__file__).resolve().parents[1]
INFRA, JOBS = REPO / "infra", REPO / "jobs"
ROOT = get_command(app)
# job config → the `synthgen` command it configures (jobs/<name>.py wraps the same command)
JOB_COMMANDS = {"generate": ("generate",), "train": ("train", "all"), "augment-eval": ("augment-eval",)}

# the README install: a pinned torch first, then synthgen
PINNED_TORCH = re.compile(r"pip install (-q )?torch==\d+\.\d+\.\d+")
INSTALL_SYNTHGEN = re.compile(r"pip install (-q )?(\.(\s|$)|\S*synthgen\b)")  # the repo, a path to it or the name


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


def test_cluster_launcher_config() -> None:
    cfg = load(INFRA / "cluster-aws.yaml")
    assert {"cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"} <= set(cfg)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_workers = [t for name, t in types.items()
                   if name != cfg["head_node_type"] and t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_workers, "no GPU worker type"
    for t in gpu_workers:
        assert t["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5"))
        assert t["max_workers"] > t.get("min_workers", 0)  # autoscaling
    setup = cfg["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if PINNED_TORCH.search(c))
    synthgen_at = next(i for i, c in enumerate(setup) if INSTALL_SYNTHGEN.search(c))
    assert torch_at < synthgen_at
    assert not re.search(r"AWS_SECRET|aws_secret", (INFRA / "cluster-aws.yaml").read_text())
    # one pinned image family (same Python on every node), not Ray's default AMI; Python named explicitly
    images = {t["node_config"].get("ImageId") for t in types.values()}
    assert len(images) == 1 and None not in images, images
    assert "ubuntu-24.04" in images.pop() and any("python3.12 -m venv" in c for c in setup)
    # drivers on the head plan with the GPUs the autoscaler can add
    max_gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_workers)
    assert f"export SYNTHGEN_MAX_GPUS={max_gpus}" in " ".join(cfg["head_setup_commands"])


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"), ("rayjob-generate.yaml", "RayJob")])
def test_kuberay_manifests(name: str, kind: str) -> None:
    doc = load(INFRA / "kuberay" / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind and doc["metadata"]["name"]
    spec = doc["spec"]
    if kind == "RayJob":
        assert "jobs/generate.py" in spec["entrypoint"]
        spec = spec["rayClusterSpec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"]
    groups = spec["workerGroupSpecs"]
    gpu = [c["resources"]["limits"]["nvidia.com/gpu"] for g in groups
           for c in g["template"]["spec"]["containers"] if "nvidia.com/gpu" in c["resources"].get("limits", {})]
    assert gpu and all(int(n) >= 1 for n in gpu)
    assert all(g["maxReplicas"] >= g["minReplicas"] and g["groupName"] for g in groups)
    # drivers run on the head: it says how many GPUs the autoscaler can add
    max_gpus = sum(g["maxReplicas"] * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
                   for g in groups for c in g["template"]["spec"]["containers"])
    assert {"name": "SYNTHGEN_MAX_GPUS", "value": str(max_gpus)} in head.get("env", [])
    assert "AWS_SECRET_ACCESS_KEY:" not in (INFRA / "kuberay" / name).read_text()


INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments and blank lines dropped, `\\` continuations joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword, " ".join(args.split())))
        pending = ""
    assert not pending, "dangling line continuation"
    return out


def test_dockerfile_parser() -> None:
    assert dockerfile_instructions("# c\nFROM a\n\nRUN x \\\n  && y\n") == [("FROM", "a"), ("RUN", "x && y")]


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_dockerfiles(flavour: str) -> None:
    ins = dockerfile_instructions((INFRA / "docker" / f"Dockerfile.{flavour}").read_text())
    assert ins[0][0] == "FROM"
    assert all(k in INSTRUCTIONS and k == k.upper() for k, _ in ins), [k for k, _ in ins]
    if flavour == "gpu":
        assert ins[0][1].startswith("nvidia/cuda:") and "runtime" in ins[0][1]
    runs = " && ".join(a for k, a in ins if k == "RUN")
    torch = PINNED_TORCH.search(runs)
    assert torch and ("/whl/cpu" if flavour == "cpu" else "/whl/cu") in runs
    install = INSTALL_SYNTHGEN.search(runs)
    assert install and torch.start() < install.start()
    # KubeRay's default liveness/readiness probes exec `wget` in the container
    assert re.search(r"apt-get install [^&]*\bwget\b", runs)
    sources = [src for k, a in ins if k == "COPY" for src in a.split()[:-1]]
    assert sources and all((REPO / src).exists() for src in sources), sources  # all in a checkout


def command(path: tuple[str, ...]):
    cmd = ROOT
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def parse(path: tuple[str, ...], args: list[str]) -> dict:
    """The option values `synthgen PATH ARGS` runs with, parsed as the CLI parses them (nothing runs)."""
    parent = ROOT.make_context("synthgen", list(path), resilient_parsing=True)
    params = command(path).make_context(path[-1], args, parent=parent).params
    return {k: v.value if hasattr(v, "value") else v for k, v in params.items() if k != "config"}  # enum → str


def test_job_configs_load() -> None:
    for name, path in JOB_COMMANDS.items():
        cfg = JOBS / "configs" / f"{name}.yaml"
        doc = load(cfg)
        keys = _option_keys(command(path))
        assert set(doc) <= set(keys) and doc["out"].startswith("s3://")
        values = parse(path, ["--config", str(cfg)])  # every key is a valid value of its option
        assert all(str(values[keys[k]]) == (",".join(map(str, v)) if isinstance(v, list) else str(v))
                   for k, v in doc.items()), values


@pytest.mark.parametrize("job, args", [("generate", []), ("train", ["all"]), ("augment_eval", [])])
def test_entry_point_help(job: str, args: list[str]) -> None:
    res = subprocess.run([sys.executable, str(JOBS / f"{job}.py"), *args, "--help"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})  # no option name cut short
    assert res.returncode == 0 and "--config" in res.stdout and "--storage-options" in res.stdout


def test_generate_flags_override_config_keys() -> None:
    cfg = JOBS / "configs" / "generate.yaml"
    opts = '{"client_kwargs": {"endpoint_url": "http://h:1"}}'
    values = parse(("generate",), ["--config", str(cfg), "--n", "7", "--cpu", "--format", "both",
                                   "--storage-options", opts])
    assert values == {**parse(("generate",), ["--config", str(cfg)]), "n": 7, "gpu": False, "output_format": "both",
                      "storage_options": opts}
    assert values["manifest"] == load(cfg)["manifest"] and values["batch_size"] == 64  # from the file
    # a flag before --config still wins: the file only supplies defaults
    assert parse(("generate",), ["--n", "7", "--config", str(cfg)])["n"] == 7
    # the flags alone (no file): unset options keep the CLI's defaults
    assert parse(("generate",), ["--manifest", "m.csv", "--out", "s3://b/o", "--batch-size", "8", "--gpu",
                                 "--no-progress"]) == {**parse(("generate",), ["--manifest", "m.csv", "--out", "s3://b/o"]),
                                                       "batch_size": 8, "gpu": True, "progress": False}
    assert parse(("generate",), ["--manifest", "m.csv", "--out", "o"])["sampler"] is None  # the model's default


def test_train_and_augment_eval_flags_override_config_keys() -> None:
    cfg = JOBS / "configs" / "train.yaml"
    assert parse(("train", "all"), ["--config", str(cfg), "--workers", "2", "--cpu"]) == {
        **parse(("train", "all"), ["--config", str(cfg)]), "workers": 2, "gpu": False}
    cfg = JOBS / "configs" / "augment-eval.yaml"
    values = parse(("augment-eval",), ["--config", str(cfg), "--task", "af, pvc", "--seeds", "3", "--cpu"])
    assert values == {**parse(("augment-eval",), ["--config", str(cfg)]), "task": "af, pvc", "seeds": 3,
                      "gpu": False}
    assert values["ratios"] == "0.25,0.5,1.0" and values["n_synthetic"] == 20000


@pytest.mark.parametrize("text, expected", [
    ("manifest: m\nout: o\nbatchsize: 3\n", "unknown key 'batchsize'"),
    ("manifest: m\nout: o\nbatch_size: 3\n", "unknown key 'batch_size'"),  # option names, as the flags spell them
    ("manifest: m\nout: o\nstorage-options: {secret: s}\n", "storage-options.secret: credentials"),
    ("manifest: [m\n", "--config"),
    ("- m\n", "expected a mapping"),
])
def test_config_errors_are_one_line_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(InputError, match=re.escape(expected)):
        parse(("generate",), ["--config", str(bad)])
    res = CliRunner().invoke(app, ["generate", "--config", str(bad)])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --config {bad}")
    assert expected in lines[0] and not (tmp_path / "o").exists()


def test_every_command_takes_config(tmp_path: Path) -> None:
    """`train distill` (added beside the others) reads --config like every command: an unknown key is refused."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: d\nout: o\nepochz: 3\n")
    res = CliRunner().invoke(app, ["train", "distill", "--config", str(bad)])
    assert res.exit_code == 2 and "unknown key 'epochz'" in res.output and "batch-size" in res.output


def test_bad_input_exits_2(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(JOBS / "generate.py"), "--out", "o"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "Missing option '--manifest'" in res.stderr
    # the train job: its config and a flag reach the library, which refuses the data folder before Ray starts
    cfg = JOBS / "configs" / "train.yaml"
    res = subprocess.run([sys.executable, str(JOBS / "train.py"), "all", "--config", str(cfg), "--data", str(tmp_path),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and f"--data {tmp_path}: no _dataset.json" in res.stderr, res.stderr
