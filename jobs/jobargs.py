"""Shared argument handling of the `ray job submit` entry points: a YAML config plus command-line overrides.

A config file is a YAML mapping whose keys are the library function's keyword names (e.g. `batch_size`,
`output_format`, `storage_options` as a mapping); see docs/scale-out.md for the schema of each job. A flag
given on the command line wins over the config; a key given nowhere takes the library's default. Credentials
never go in a config file (it is checked in): `storage_options` there may not hold `key`, `secret` or
`token` — they come from the environment (AWS_*, ~/.aws/config, an instance role) or `--storage-options`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from synthgen.errors import InputError, outside_failure

SECRET_OPTIONS = ("key", "secret", "token")


def json_object(value: str) -> dict:
    """argparse type for `--storage-options '{"client_kwargs": {...}}'`."""
    try:
        opts = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object ({e})") from e
    if not isinstance(opts, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return opts


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser whose unset flags are absent from the result (so config values and library defaults show)."""
    p = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML file of keyword arguments (jobs/configs/*.yaml); flags override it.")
    p.add_argument("--storage-options", dest="storage_options", type=json_object,
                   help="JSON object passed to fsspec/s3fs (endpoint, profile…).")
    return p


def add_gpu_flags(p: argparse.ArgumentParser, gpu_help: str) -> None:
    """`--gpu` / `--cpu`; neither = the library's rule: GPUs if the Ray cluster has or can add some."""
    p.add_argument("--gpu", dest="gpu", action="store_const", const=True,
                   help=f"{gpu_help} (default: if the Ray cluster has GPUs or SYNTHGEN_MAX_GPUS says it can add some).")
    p.add_argument("--cpu", dest="gpu", action="store_const", const=False, help="CPU only, even if GPUs exist.")


def load_config(path: str, allowed: Sequence[str]) -> dict:
    """Read a job config: a YAML mapping of known keys, with no credentials in it."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"--config {path}: {e}") from e
    if not isinstance(doc, dict):
        raise InputError(f"--config {path}: expected a mapping of keyword arguments")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise InputError(f"--config {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    secrets = sorted(set(doc.get("storage_options") or {}) & set(SECRET_OPTIONS))
    if secrets:
        raise InputError(f"--config {path}: storage_options.{secrets[0]}: credentials do not belong in a config "
                         "file; use AWS_* environment variables, ~/.aws/config or --storage-options")
    return doc


def parse(parser: argparse.ArgumentParser, argv: Sequence[str], allowed: Sequence[str],
          required: Sequence[str]) -> dict:
    """Config file + flags → the library's keyword arguments (only those set somewhere)."""
    given = vars(parser.parse_args(argv))
    config = load_config(given.pop("config"), allowed) if "config" in given else {}
    kwargs = {**config, **given}
    missing = [k for k in required if kwargs.get(k) is None]
    if missing:
        raise InputError(f"missing {', '.join(missing)}: set them in --config or as --{missing[0].replace('_', '-')}")
    return kwargs


def main(parse_args: Callable[[Sequence[str]], dict], fn: Callable[..., object]) -> None:
    """Parse sys.argv and call the library; as the CLI does, bad input prints one line and exits 2, a storage,
    network, credential or permission failure prints one line and exits 1 (SYNTHGEN_DEBUG=1: the traceback too)."""
    try:
        fn(**parse_args(sys.argv[1:]))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        line = outside_failure(e)
        if line is None:
            raise
        if os.environ.get("SYNTHGEN_DEBUG") == "1":
            traceback.print_exception(e, file=sys.stderr)
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)
