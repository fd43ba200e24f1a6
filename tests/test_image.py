"""What the Docker images hold: the wheel built from exactly the files the Dockerfiles copy.

Docker cannot run here, so the test does what `docker build` does up to `pip install .`: it assembles the
build context of the Dockerfile's COPY lines in a temporary folder, builds the wheel from it with pip (no
network: `--no-deps --no-build-isolation`), and checks that the wheel holds every package pyproject.toml
declares (with its package data), that its entry points resolve, and that every first-party module the
wheel's code or the copied jobs/ scripts import is importable from the wheel alone — in a Python that does
not see this checkout or its editable install.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from setuptools import find_packages

from test_infra import INFRA, REPO, dockerfile_instructions

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FIND = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
DECLARED = sorted(find_packages(where=str(REPO), include=FIND["include"]))  # what a checkout's wheel holds
FIRST_PARTY = {p.parent.name for p in REPO.glob("*/__init__.py")}  # this repository's packages, declared or not


def assemble_context(dockerfile: Path, dest: Path) -> None:
    """Copy into ``dest`` (the image's WORKDIR) what the Dockerfile's COPY lines copy from the repository root."""
    ins = dockerfile_instructions(dockerfile.read_text())
    workdir = PurePosixPath(next(a for k, a in ins if k == "WORKDIR"))
    for keyword, args in ins:
        if keyword != "COPY":
            continue
        *sources, target = args.split()
        assert sources and not any(s.startswith("--") for s in sources), f"COPY flags are not handled: {args}"
        target_path = PurePosixPath(target)
        if target_path.is_absolute():
            target_path = target_path.relative_to(workdir)  # the test covers what lands in WORKDIR
        to = dest / target_path
        for src in sources:
            path = REPO / src
            if path.is_dir():  # Docker copies a folder's contents into the target folder
                shutil.copytree(path, to, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                into = to / path.name if target.endswith("/") else to
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into)


def build_wheel(context: Path, out: Path) -> zipfile.ZipFile:
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(context)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def first_party_imports(path: Path) -> set[str]:
    """Modules of this project that a file imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from pkg import name`: name may be a submodule
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if (REPO / node.module.replace(".", "/") / f"{a.name}.py").exists()
                      or (REPO / node.module.replace(".", "/") / a.name / "__init__.py").exists()}
    return {m for m in found if m.split(".")[0] in FIRST_PARTY}


def import_from(wheel_dir: Path, jobs_dir: Path, modules: list[str]) -> dict[str, str]:
    """Import ``modules`` in a fresh Python that sees the unpacked wheel, the copied jobs/ folder and the
    third-party site-packages only: `-S` keeps site's .pth files (this checkout's editable install) out, `-I`
    keeps PYTHONPATH and the working folder out. Returns {module: problem} for each module that failed or came
    from anywhere else."""
    allowed = (str(wheel_dir), str(jobs_dir))
    code = f"""
import importlib, json, sys
sys.path[:0] = [{str(wheel_dir)!r}, {str(jobs_dir)!r}]
sys.path.append({sysconfig.get_paths()["purelib"]!r})
problems = {{}}
for name in {modules!r}:
    try:
        where = importlib.import_module(name).__file__ or ""
        if not where.startswith({allowed!r}):
            problems[name] = "imported from " + where
    except Exception as e:
        problems[name] = repr(e)
print(json.dumps(problems))
"""
    res = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=wheel_dir.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_image_wheel_holds_every_package_entry_point_and_import(flavour: str, tmp_path: Path) -> None:
    context = tmp_path / "context"
    assemble_context(INFRA / "docker" / f"Dockerfile.{flavour}", context)
    wheel = build_wheel(context, tmp_path / "wheel")
    names = set(wheel.namelist())

    # every package pyproject.toml declares, with every module and package-data file a checkout has
    expected = {str(p.relative_to(REPO)) for pkg in DECLARED for p in (REPO / pkg.replace(".", "/")).glob("*.py")}
    expected |= {str(p.relative_to(REPO)) for pkg, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items()
                 for pattern in patterns for p in (REPO / pkg.replace(".", "/")).glob(pattern) if p.is_file()}
    assert not expected - names, f"left out of the image's wheel: {sorted(expected - names)[:10]}"

    # entry points: each console script's module:function is in the wheel
    (ep_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = dict(line.split(" = ") for line in wheel.read(ep_file).decode().splitlines() if " = " in line)
    assert set(PYPROJECT["project"]["scripts"]) <= set(scripts)

    # every first-party import of the wheel's code and of the copied jobs/ scripts, imported from the wheel alone
    unpacked = tmp_path / "unpacked"
    wheel.extractall(unpacked)
    sources = [p for p in unpacked.rglob("*.py")] + sorted((context / "jobs").glob("*.py"))
    modules = {m for p in sources for m in first_party_imports(p)}
    modules |= {v.split(":")[0] for v in scripts.values()}
    modules |= {p.stem for p in (context / "jobs").glob("*.py")}  # the entry points `ray job submit` runs
    modules |= {str(p.relative_to(unpacked).with_suffix("")).replace("/", ".").removesuffix(".__init__")
                for p in unpacked.rglob("*.py") if p.name != "__main__.py"}  # importing __main__ runs the CLI
    assert {"synthgen.cli", "classifiers.experiment", "synthgen.generate.run"} <= modules
    problems = import_from(unpacked, context / "jobs", sorted(modules))
    assert not problems, problems
