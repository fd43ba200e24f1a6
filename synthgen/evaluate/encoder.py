"""The evaluation encoder: a Net1D trained CLIP-style against report embeddings, saved as a verified bundle.

Training is one small single-process job (~0.25 M parameters, ~1,500 PTB-XL training records, minutes on
2 CPU cores), so it is a plain torch loop rather than a Ray Train job. Bundle layout (local or s3://; written
and read by ``synthgen.io.bundles``, as model bundles are):

    encoder.safetensors   ClipModel weights (Net1D, text projection, temperature)
    MODEL_CARD.md         what it is, what it was trained on, how it scored
    config.json           Net1D config, text embedder {name, dim}, training record, sha256 of the weights;
                          written last, so a bundle without it is incomplete
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from synthgen.conditions.embedders import Embedder, get_embedder
from synthgen.conditions.prompts import ordered_prompt
from synthgen.errors import InputError
from synthgen.io.bundles import CONFIG_FILE, load_weights, read_config, save_bundle_files
from synthgen.io.paths import StorageOptions
from synthgen.io.shards import read_shards, read_summary, signals
from synthgen.model.net1d import ClipModel, Net1DConfig

WEIGHTS_FILE = "encoder.safetensors"
BATCH_SIZE = 64
LR = 2e-3
TEXT_HIDDEN = 256
NO_REPORT = "The report of the ECG is that no report was given."


@dataclass
class Encoder:
    """A loaded, verified encoder bundle (CPU, eval mode); ``model_hash`` is sha256 of its config.json."""

    model: ClipModel
    config: dict[str, Any]
    model_hash: str
    url: str

    @torch.no_grad()
    def features(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Pooled Net1D representation (N, feature_dim) of ECGs (N, 12, 1024) in mV."""
        return _batched(lambda b: self.model.ecg.features(b), x, batch_size)

    @torch.no_grad()
    def embed_ecg(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Unit vectors in the joint space for ECGs (N, 12, 1024)."""
        return _batched(self.model.embed_ecg, x, batch_size)

    @torch.no_grad()
    def embed_text(self, text_vectors: np.ndarray) -> np.ndarray:
        """Unit vectors in the joint space for the text embedder's vectors (N, dim)."""
        return self.model.embed_text(torch.from_numpy(np.asarray(text_vectors, np.float32))).numpy()

    def text_embedder(self, cache: str | None = None) -> Embedder:
        """The text embedder this encoder was trained with (its vectors are only meaningful through it)."""
        return get_embedder(self.config["embedder"]["name"], cache=cache)


def _batched(fn: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = [fn(torch.from_numpy(np.array(x[i:i + batch_size], np.float32))).numpy()  # a writable copy per batch
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def prompts_of(reports: list[list[str] | None]) -> list[str]:
    """Ordered prompts for report lists; a record without a report gets one shared "no report" prompt."""
    return [ordered_prompt(r) if r and any(s and s.strip() for s in r) else NO_REPORT for r in reports]


def _load_split(data: str, split: str, storage_options: StorageOptions) -> tuple[np.ndarray, list[str]]:
    table = read_shards(data, split, ["signal", "reports"], storage_options)
    if table.num_rows == 0:
        raise InputError(f"{data}: the {split} split is empty; the encoder needs train and val records")
    return signals(table).copy(), prompts_of(table.column("reports").to_pylist())  # copy: torch wants writable


def _same_text(ids: torch.Tensor) -> torch.Tensor:
    return ids[:, None] == ids[None, :]


def _val_loss(model: ClipModel, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean loss over fixed, unshuffled batches of BATCH_SIZE (InfoNCE depends on the batch size)."""
    model.eval()
    losses, weights = [], []
    with torch.no_grad():
        for i in range(0, len(x), BATCH_SIZE):
            sl = slice(i, i + BATCH_SIZE)
            if len(x[sl]) < 2:
                continue
            losses.append(model.loss(x[sl], t[sl], _same_text(ids[sl])).item())
            weights.append(len(x[sl]))
    return float(np.average(losses, weights=weights))


def train_encoder(data: str, out: str, *, epochs: int = 20, embedder: str = "local", cache: str | None = None,
                  seed: int = 0, storage_options: StorageOptions = None) -> str:
    """Train the evaluation encoder on the train split of prepared shards, keep the epoch with the best
    val loss, write the bundle to ``out``; returns its model hash (sha256 of config.json)."""
    if epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    emb = get_embedder(embedder, cache=cache, storage_options=storage_options)
    x_tr, p_tr = _load_split(data, "train", storage_options)
    x_va, p_va = _load_split(data, "val", storage_options)
    vocab = {p: i for i, p in enumerate(dict.fromkeys(p_tr + p_va))}
    vecs = torch.from_numpy(emb.embed(list(vocab)))
    ids_tr = torch.tensor([vocab[p] for p in p_tr])
    ids_va = torch.tensor([vocab[p] for p in p_va])
    xt_tr, xt_va = torch.from_numpy(x_tr), torch.from_numpy(x_va)

    cfg = Net1DConfig()
    model = ClipModel(cfg, emb.dim, TEXT_HIDDEN)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps_per_epoch = max(1, len(x_tr) // BATCH_SIZE)
    # cosine decay without warm-up: short runs (tests, tiny data) spend no epochs at a negligible rate
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch, eta_min=LR / 20)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"val_loss": float("inf")}
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.from_numpy(rng.permutation(len(x_tr)))
        train_losses = []
        for s in range(steps_per_epoch):  # drop the ragged last batch: a 1-row batch has no negatives
            idx = order[s * BATCH_SIZE:(s + 1) * BATCH_SIZE]
            loss = model.loss(xt_tr[idx], vecs[ids_tr[idx]], _same_text(ids_tr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            train_losses.append(loss.item())
        val = _val_loss(model, xt_va, vecs[ids_va], ids_va)
        history.append({"epoch": epoch, "train_loss": float(np.mean(train_losses)), "val_loss": val})
        print(f"[encoder] epoch {epoch}/{epochs}  train {history[-1]['train_loss']:.4f}  val {val:.4f}  "
              f"{time.monotonic() - started:.0f} s", flush=True)
        if val < best["val_loss"]:
            best = {"val_loss": val, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    model.load_state_dict(best.pop("state"))
    training = {"data": data, "data_fingerprint": (read_summary(data, storage_options) or {}).get("fingerprint"),
                "epochs": epochs, "seed": seed, "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
                "n_train": len(x_tr), "n_val": len(x_va), "batch_size": BATCH_SIZE,
                "wall_s": round(time.monotonic() - started, 1), "history": history}
    return save_encoder(out, model, {"net1d": asdict(cfg), "text_hidden": TEXT_HIDDEN,
                                     "embedder": {"name": emb.name, "dim": emb.dim}, "training": training},
                        storage_options)


def _card(config: dict[str, Any]) -> str:
    tr = config["training"]
    return (f"# synthgen evaluation encoder\n\nNet1D ECG encoder + MLP text projection, trained CLIP-style "
            f"(symmetric InfoNCE, identical prompts as shared positives) against `{config['embedder']['name']}` "
            f"report embeddings of ordered prompts.\n\n- data: `{tr['data']}` (fingerprint "
            f"`{tr['data_fingerprint']}`), {tr['n_train']} train / {tr['n_val']} val records\n"
            f"- best epoch {tr['best_epoch']} of {tr['epochs']}, val loss {tr['best_val_loss']:.4f} "
            f"(batch {tr['batch_size']})\n\nUse: features for FID / precision-recall / memorisation, joint "
            "embeddings for CLIP scores in `synthgen evaluate`. Trained on one small dataset: compare scores "
            "only against references computed with the same encoder.\n")


def save_encoder(url: str, model: ClipModel, config: dict[str, Any], storage_options: StorageOptions = None) -> str:
    """Write weights, card, then config.json (with the weights' sha256); returns the model hash."""
    return save_bundle_files(url, {WEIGHTS_FILE: model}, config, _card(config), storage_options)


def load_encoder(url: str, storage_options: StorageOptions = None) -> Encoder:
    """Load an encoder bundle, verifying the weights' sha256; InputError names the bad file."""
    config, model_hash = read_config(url, storage_options)
    try:
        cfg = Net1DConfig(**config["net1d"])
        model = ClipModel(cfg, int(config["embedder"]["dim"]), int(config["text_hidden"]))
        expected = config["files"][WEIGHTS_FILE]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{url}/{CONFIG_FILE} is not an encoder config: {err!r}") from None
    load_weights(model, url, WEIGHTS_FILE, expected, "encoder", storage_options)
    return Encoder(model.eval(), config, model_hash, url)
