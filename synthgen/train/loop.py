"""The one epoch loop both stages share, inside a Ray Train worker: resume, step, checkpoint, validate.

A checkpoint holds the latest training state (to resume exactly where a killed run stopped) and, beside
it, the weights that scored best on the validation split (what gets exported) — so checkpoint retention
never has to choose between "latest" and "best".
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from synthgen.train.presets import StageConfig

STATE_FILE = "state.pt"


@dataclass
class Progress:
    epoch: int = 0          # epochs fully done
    step_in_epoch: int = 0  # steps done inside the current epoch
    global_step: int = 0
    best_val: float = math.inf  # the best ``select`` value so far
    best_epoch: int = -1
    resumed_at: list[int] = field(default_factory=list)  # global steps at which a killed run was resumed
    ranks: dict[str, bool] = field(default_factory=dict)  # rank_agreement() of the last epoch (2+ workers)


def world() -> tuple[int, int]:
    """(rank, world size) of this worker; (0, 1) outside distributed training."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def seed_worker(seed: int) -> None:
    """Seed torch's global RNG differently on every rank (noise, timesteps, dropout, condition masks).

    Call it after the model is built and wrapped: DDP copies rank 0's weights to every rank at wrap time, so
    initial weights agree whatever each rank drew, while a per-rank seed keeps ranks from drawing the same
    noise for different batches (issue 10: every rank used one seed).
    """
    rank, _ = world()
    torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def shuffle_seed(seed: int, epoch: int) -> int:
    """The data-order seed of one epoch on this rank."""
    return int(np.random.SeedSequence([seed, epoch, world()[0]]).generate_state(1)[0])


def _digest(arrays: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a.detach().cpu().numpy() if torch.is_tensor(a) else a).tobytes())
    return h.hexdigest()


def rank_agreement(model: torch.nn.Module, batch: dict, rng_state: torch.Tensor) -> dict[str, bool]:
    """Across DDP ranks: the weights must be identical, while each rank's batch and random state (hence its
    noise, timesteps and dropout) must differ. Empty with one worker."""
    _, size = world()
    if size < 2:
        return {}
    numeric = [batch[k] for k in sorted(batch) if getattr(batch[k], "dtype", None) not in (None, object)]
    mine = (_digest(model.state_dict().values()), _digest(numeric), _digest([rng_state]))
    everyone: list[Any] = [None] * size
    torch.distributed.all_gather_object(everyone, mine)
    return {"same_weights": len({e[0] for e in everyone}) == 1,
            "distinct_batches": len({e[1] for e in everyone}) == size,
            "distinct_random_state": len({e[2] for e in everyone}) == size}


def mean_over_workers(total: float, count: int) -> float:
    """A validation mean over every worker's share of the split.

    Reduced on the training device: with GPUs Ray Train's process group is NCCL, which has no CPU tensors.
    """
    if world()[1] > 1:
        import ray.train.torch

        t = torch.tensor([total, float(count)], dtype=torch.float64, device=ray.train.torch.get_device())
        torch.distributed.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   ema: Any | None = None, max_grad_norm: float = 1.0) -> float:
    """One update of ``model`` from ``loss`` (gradients clipped to ``max_grad_norm``), then of its moving
    average ``ema`` (an object with ``update(module)``) if given; returns the loss as a float for the epoch line."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if ema is not None:
        ema.update(unwrap(model))
    return loss.item()


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``modules``' parameters take no gradient (a loss through them reaches only its other
    inputs); restored after, even on error."""
    for m in modules:
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m in modules:
            m.requires_grad_(True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def load_checkpoint_state() -> dict[str, Any] | None:
    """The state saved in the run's latest checkpoint, if Ray Train is resuming one."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)


def fit(
    *,
    name: str,
    stage: StageConfig,
    stateful: dict[str, Any],
    best_source: torch.nn.Module,
    batches: Callable[[int], Iterable[dict]],
    train_step: Callable[[dict, int], float],
    validate: Callable[[int], dict[str, float]],
) -> None:
    """Run `stage.epochs` epochs of `train_step`, resuming from the latest checkpoint if there is one.

    stateful: objects with state_dict/load_state_dict (models, optimisers, EMA) saved in checkpoints.
    best_source: the module whose weights are kept when validation improves (the EMA for diffusion).
    batches(epoch): that epoch's training batches (shuffled with an epoch-dependent seed).
    validate(epoch): this epoch's validation metrics; the key ``select`` (lower is better) chooses the kept
    weights, and an epoch without it (e.g. between sample checks) does not compete.
    """
    import ray.train

    rank, _ = world()
    progress, best_weights = Progress(), copy.deepcopy(best_source.state_dict())
    saved = load_checkpoint_state()
    if saved is not None:
        for key, obj in stateful.items():
            obj.load_state_dict(saved[key])
        progress, best_weights = Progress(**saved["progress"]), saved["best"]
        progress.resumed_at.append(progress.global_step)
        if rank == 0:
            print(f"[{name}] resumed from checkpoint: epoch {progress.epoch}, step {progress.global_step}", flush=True)

    def report(metrics: dict[str, float]) -> None:
        state = {k: v.state_dict() for k, v in stateful.items()}
        state.update(progress=asdict(progress), best=best_weights)
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save(state, os.path.join(d, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report({**metrics, "epoch": progress.epoch, "step": progress.global_step},
                             checkpoint=checkpoint)

    for epoch in range(progress.epoch, stage.epochs):
        started, losses, first = time.time(), [], None
        for i, batch in enumerate(batches(epoch)):
            if i < progress.step_in_epoch:
                continue  # already trained on before the last checkpoint
            first = first or (batch, torch.random.get_rng_state())
            losses.append(train_step(batch, epoch))
            progress.step_in_epoch, progress.global_step = i + 1, progress.global_step + 1
            if progress.global_step % stage.checkpoint_every == 0:
                report({"train_loss": losses[-1]})
        if first is not None:
            progress.ranks = rank_agreement(stateful["model"], *first)
        metrics = validate(epoch)
        selected = metrics.get("select")
        if selected is not None and selected < progress.best_val:
            progress.best_val, progress.best_epoch = selected, epoch
            best_weights = copy.deepcopy(best_source.state_dict())
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        train_loss = sum(losses) / max(len(losses), 1)
        if rank == 0:
            shown = "  ".join(f"{k} {v:.5g}" for k, v in metrics.items())
            print(f"[{name}] epoch {epoch + 1}/{stage.epochs}  train {train_loss:.5f}  {shown}  "
                  + (f"best {progress.best_val:.5g} (epoch {progress.best_epoch + 1})  "
                     if math.isfinite(progress.best_val) else "") + f"{time.time() - started:.1f} s",
                  flush=True)
        report({"train_loss": train_loss, **metrics, "epoch_seconds": time.time() - started})
