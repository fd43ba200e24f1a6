"""Scale-out files (issue 7): cluster configs, KubeRay manifests, Dockerfiles and the Ray job entry points.

Fast and offline: no cluster, no image build. The schemas below are what `infra/` promises; see
docs/scale-out.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthgen.errors import InputError

REPO = Path(__file__).resolve().parents[1]
INFRA, JOBS = REPO / "infra", REPO / "jobs"
sys.path.insert(0, str(JOBS))

import augment_eval as augment_eval_job  # noqa: E402  (jobs/ is not a package: entry points run as scripts)
import generate as generate_job  # noqa: E402
import train as train_job  # noqa: E402

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


def test_job_configs_load() -> None:
    for name, job in (("generate", generate_job), ("train", train_job), ("augment-eval", augment_eval_job)):
        doc = load(JOBS / "configs" / f"{name}.yaml")
        assert set(doc) <= set(job.KEYS)
        assert doc["out"].startswith("s3://")


@pytest.mark.parametrize("job", ["generate", "train", "augment_eval"])
def test_entry_point_help(job: str) -> None:
    res = subprocess.run([sys.executable, str(JOBS / f"{job}.py"), "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "--config" in res.stdout and "--storage-options" in res.stdout


def test_generate_config_to_kwargs() -> None:
    cfg = JOBS / "configs" / "generate.yaml"
    kw = generate_job.parse_args(["--config", str(cfg), "--n", "7", "--cpu", "--format", "both",
                                  "--storage-options", '{"client_kwargs": {"endpoint_url": "http://h:1"}}'])
    assert kw == {**load(cfg), "n": 7, "gpu": False, "output_format": "both",
                  "storage_options": {"client_kwargs": {"endpoint_url": "http://h:1"}}}
    # the CLI's flags alone still work (the job takes `synthgen generate`'s arguments); unset = library default
    assert generate_job.parse_args(["--manifest", "m.csv", "--out", "s3://b/o", "--batch-size", "8", "--gpu",
                                    "--no-progress"]) == {
        "manifest": "m.csv", "out": "s3://b/o", "batch_size": 8, "gpu": True, "progress": False}
    with pytest.raises(InputError, match="missing manifest"):
        generate_job.parse_args(["--out", "o"])


def test_train_config_to_kwargs() -> None:
    cfg = JOBS / "configs" / "train.yaml"
    kw = train_job.parse_args(["--config", str(cfg), "--workers", "2", "--cpu",
                               "--storage-options", '{"key": "AKIA-not-logged"}'])
    assert kw == {**load(cfg), "workers": 2, "gpu": False, "storage_options": {"key": "AKIA-not-logged"},
                  "command": kw["command"]}
    assert "AKIA" not in kw["command"] and kw["command"].startswith("jobs/train.py --config")
    assert train_job.parse_args(["--data", "d", "--out", "o"]) == {
        "stage": "all", "data": "d", "out": "o", "command": "jobs/train.py --data d --out o"}


def test_augment_eval_config_to_kwargs() -> None:
    cfg = JOBS / "configs" / "augment-eval.yaml"
    kw = augment_eval_job.parse_args(["--config", str(cfg), "--task", "af, pvc", "--seeds", "3", "--cpu"])
    assert kw == {**load(cfg), "tasks": ["af", "pvc"], "seeds": 3, "gpu": False}
    assert augment_eval_job.parse_args(["--data", "d", "--out", "o"]) == {"data": "d", "out": "o"}
    with pytest.raises(InputError, match="missing data"):
        augment_eval_job.parse_args(["--out", "o"])


def test_config_rejects_unknown_keys_and_credentials(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("manifest: m\nout: o\nbatchsize: 3\n")
    with pytest.raises(InputError, match="unknown key.*batchsize"):
        generate_job.parse_args(["--config", str(bad)])
    bad.write_text("manifest: m\nout: o\nstorage_options: {secret: s}\n")
    with pytest.raises(InputError, match="credentials"):
        generate_job.parse_args(["--config", str(bad)])


def test_bad_input_exits_2(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(JOBS / "generate.py"), "--out", "o"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "missing manifest" in res.stderr
