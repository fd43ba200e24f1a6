"""Bundle folders (local or object storage): the one writer and reader of the layout that model bundles
(``synthgen.model.bundle``) and evaluation-encoder bundles (``synthgen.evaluate.encoder``) share.

    <name>.safetensors   weights, one file per module (safetensors: loading never runs pickled code)
    MODEL_CARD.md        what the model is, what it was trained on, its limits
    config.json          the owner's keys + ``files`` (sha256 of each weight file) + ``synthgen_version``;
                         written last, so a folder without it is incomplete

The model hash is the sha256 of config.json's bytes: as config.json pins the weight hashes, it identifies the
exact weights and settings.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec
import safetensors.torch
from torch import nn

from synthgen import __version__
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, join, resolve, write_bytes_atomic

CONFIG_FILE = "config.json"
CARD_FILE = "MODEL_CARD.md"


def sha256(data: bytes) -> str:
    """Hex sha256 of bytes: a weight file's pin in config.json, config.json's own = the model hash."""
    return hashlib.sha256(data).hexdigest()


def _read_file(fs: fsspec.AbstractFileSystem, root: str, name: str, url: str,
                     expected_sha256: str | None = None) -> bytes:
    """One file of a bundle folder (model or encoder), checked against the sha256 its config pins.

    A missing or altered file is an InputError that names the bundle and the file.
    """
    path = join(root, name)
    if not fs.exists(path):
        raise InputError(f"bundle {url} is missing {name}")
    with fs.open(path, "rb") as f:
        data = f.read()
    if expected_sha256 is not None and sha256(data) != expected_sha256:
        raise InputError(f"bundle {url}: {name} has sha256 {sha256(data)}, expected {expected_sha256} "
                         "(file altered or from another bundle)")
    return data


def save_bundle_files(url: str, modules: dict[str, nn.Module], config: dict[str, Any], card: str,
                      storage_options: StorageOptions = None) -> str:
    """Write each of ``modules`` (weight file name → module) as safetensors, then the card, then config.json
    (``config`` + the weights' sha256 + the synthgen version) into folder ``url``; returns the model hash.
    Serialisation is deterministic: the same weights and config give the same hash."""
    fs, root = resolve(url, storage_options)
    files = {}
    for name, module in modules.items():
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        data = safetensors.torch.save(state)
        write_bytes_atomic(fs, join(root, name), data)
        files[name] = sha256(data)
    write_bytes_atomic(fs, join(root, CARD_FILE), card.encode())
    config_bytes = (json.dumps({**config, "files": files, "synthgen_version": __version__},
                               indent=2, sort_keys=True) + "\n").encode()
    write_bytes_atomic(fs, join(root, CONFIG_FILE), config_bytes)
    return sha256(config_bytes)


def read_config(url: str, storage_options: StorageOptions = None) -> tuple[dict[str, Any], str]:
    """(config.json as a dict, the model hash); InputError if the file is missing or not JSON."""
    fs, root = resolve(url, storage_options)
    config_bytes = _read_file(fs, root, CONFIG_FILE, url)
    try:
        config = json.loads(config_bytes)
    except ValueError as err:
        raise InputError(f"{url}/{CONFIG_FILE} is not valid JSON: {err}") from None
    return config, sha256(config_bytes)


def load_weights(module: nn.Module, url: str, name: str, sha256_expected: str, kind: str,
                 storage_options: StorageOptions = None) -> None:
    """Load weight file ``name`` of the bundle at ``url`` into ``module`` after checking its sha256; InputError
    naming the ``kind`` of bundle and the file when it is missing, altered or does not fit ``module``."""
    fs, root = resolve(url, storage_options)
    data = _read_file(fs, root, name, url, sha256_expected)
    try:
        module.load_state_dict(safetensors.torch.load(data))
    except RuntimeError as err:  # shape or key mismatch between the config and the weights
        raise InputError(f"{kind} bundle {url}: {name} does not match its config: {err}") from None


def read_card(url: str, storage_options: StorageOptions = None) -> str:
    """The bundle's MODEL_CARD.md (not hashed: a derived bundle extends its parent's card)."""
    fs, root = resolve(url, storage_options)
    return _read_file(fs, root, CARD_FILE, url).decode()
