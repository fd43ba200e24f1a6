"""The `synthgen` command: parses arguments and calls one library function per command, nothing else.

Heavy libraries (torch, ray, diffusers) are imported inside the commands so `synthgen --help` is instant.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Optional

import typer

from synthgen.errors import InputError

app = typer.Typer(help="Synthetic 12-lead ECGs from clinical reports and patient info, at batch scale.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
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


def _run(fn, *args, **kwargs):
    """Call a library function; a user-fixable error becomes a message and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except InputError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None


StorageOpt = typer.Option(None, "--storage-options", help="JSON object passed to fsspec/s3fs (endpoint, key…).")


# ---------------------------------------------------------------------------------------------- prepare
@prepare_app.command("ptbxl")
def prepare_ptbxl(
    src: str = typer.Option(..., help="PTB-XL folder in PhysioNet's layout (ptbxl_database.csv, records100/…)."),
    out: str = typer.Option(..., help="Output folder or s3:// URL for the shards."),
    workers: Optional[int] = typer.Option(None, help="Parallel workers (default: all CPUs)."),
    storage_options: Optional[str] = StorageOpt,
) -> None:
    from synthgen.data.prepare import prepare

    _run(prepare, "ptbxl", src, out, workers=workers, storage_options=_storage_options(storage_options))


@prepare_app.command("mimic-iv-ecg")
def prepare_mimic(
    src: str = typer.Option(..., help="MIMIC-IV-ECG folder (record_list.csv, machine_measurements.csv, files/…)."),
    out: str = typer.Option(..., help="Output folder or s3:// URL for the shards."),
    patients: Optional[str] = typer.Option(None, help="MIMIC-IV hosp/patients.csv(.gz) for age and sex."),
    workers: Optional[int] = typer.Option(None, help="Parallel workers (default: all CPUs)."),
    storage_options: Optional[str] = StorageOpt,
) -> None:
    from synthgen.data.prepare import prepare

    _run(prepare, "mimic-iv-ecg", src, out, patients=patients, workers=workers,
         storage_options=_storage_options(storage_options))


@prepare_app.command("wfdb")
def prepare_wfdb(
    src: str = typer.Option(..., help="Folder of WFDB records (.hea/.dat), searched recursively."),
    metadata: str = typer.Option(..., help="CSV/Parquet table: record, report(s), age, sex[, hr, patient_id]."),
    out: str = typer.Option(..., help="Output folder or s3:// URL for the shards."),
    workers: Optional[int] = typer.Option(None, help="Parallel workers (default: all CPUs)."),
    storage_options: Optional[str] = StorageOpt,
) -> None:
    from synthgen.data.prepare import prepare

    _run(prepare, "wfdb", src, out, metadata=metadata, workers=workers,
         storage_options=_storage_options(storage_options))
