"""Training a row generator: checkpoints every epoch, resumable, reproducible.

``train(training.h5, model.pt, cfg)`` builds the :class:`~hpcxtal.generate.plugin.Trainer`
of ``cfg.model``'s kind (fitting its transforms and the condition sampler on the
training table) and runs the one loop every kind shares. Every epoch ends with an
atomic checkpoint (``model.pt.ckpt``: networks, optimisers, the torch RNG used for
shuffling and noise, loss history); a run that finds a checkpoint of the same config
and data resumes from it, and gives the same weights as an uninterrupted run. The
finished model file holds the config, seed, data checksum, loss history and the kind's
state (weights in float16, to keep the shipped default small). :class:`VAETrainer`
trains the (C)VAE.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpcxtal.config import to_mapping
from hpcxtal.generate.conditions import ConditionSampler
from hpcxtal.generate.cvae import ModelConfig, RowVAE, condition_onehot
from hpcxtal.generate.gmm import ColumnGMM, free_mask, row_values
from hpcxtal.generate.plugin import KINDS, MODEL_FORMAT, MODEL_VERSION, Trainer, tensor_state
from hpcxtal.store.hdf5 import atomic_path, file_sha256, read_table
from hpcxtal.store.table import Table

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training schedule (published: batch 2048, 250 epochs) and the network: ``model``
    is the config of one kind (:class:`ModelConfig` for the (C)VAE,
    :class:`~hpcxtal.generate.diffusion.DiffusionConfig`, ...)."""

    model: Any = field(default_factory=ModelConfig)
    epochs: int = 20
    batch_size: int = 2048
    learning_rate: float = 1e-3
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be >= 1, learning_rate > 0")
        if getattr(self.model, "kind", None) not in KINDS:
            raise ValueError(f"model config {type(self.model).__name__} names no generator kind")


def encode_table(table, gmm: ColumnGMM | None, k: int, seed: int, n_bins: int = 0
                 ) -> tuple[dict[str, torch.Tensor], ColumnGMM]:
    """Tensors the (C)VAE trains on (GMM, with ``n_bins`` binned coordinates if > 0,
    fitted here if ``gmm`` is None)."""
    values = row_values(table["cell"], table["xyz"])
    mask = free_mask(table["spg"], table["wps"])
    if gmm is None:
        gmm = ColumnGMM.fit(values, mask, k, seed, n_bins)
    comp, resid = gmm.encode(values)
    resid = np.where(mask, np.clip(resid, -20, 20), 0.0)
    comp = np.where(mask, comp, 0)
    spg = torch.as_tensor(table["spg"].astype(np.int64))
    wps = torch.as_tensor(table["wps"].astype(np.int64))
    return {"comp": torch.as_tensor(comp, dtype=torch.long),
            "resid": torch.as_tensor(resid, dtype=torch.float32),
            "mask": torch.as_tensor(mask), "cond": condition_onehot(spg, wps)}, gmm


class VAETrainer(Trainer):
    """The (C)VAE: GMM transform, condition sampler, :class:`RowVAE` and Adam."""

    def __init__(self, cfg: TrainConfig, table: Table):
        self.cfg = cfg.model
        self.kind = cfg.model.kind
        self.data, self.gmm = encode_table(table, None, cfg.model.n_components, cfg.seed,
                                           cfg.model.n_bins)
        self.sampler = ConditionSampler.fit(table["spg"], table["wps"])
        self.active = torch.as_tensor(self.gmm.active)
        self.continuous = torch.as_tensor(~self.gmm.binned)
        torch.manual_seed(cfg.seed)
        self.model = RowVAE(cfg.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate)

    def step(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, float]:
        self.model.train()
        noise = torch.randn(len(batch["comp"]), self.cfg.latent_dim, generator=rng)
        loss, parts = self.model.loss(batch, noise, self.active, self.continuous)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return parts

    def model_state(self) -> dict:
        return {"gmm": tensor_state(self.gmm.state()), "conditions": tensor_state(self.sampler.state()),
                "weights": self.weights()}


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train(src: str | Path, dest: str | Path, cfg: TrainConfig, restart: bool = False,
          stop_after: int | None = None) -> dict:
    """Train on training table ``src``; write the model file ``dest``. Resumes from
    ``dest.ckpt`` unless ``restart``. ``stop_after`` ends this call after that many
    epochs (a job with a short walltime); the next call continues from the checkpoint.
    Returns a summary (epochs done, losses, seconds, whether the model file is written)."""
    src, dest = Path(src), Path(dest)
    ckpt_path = dest.with_name(dest.name + ".ckpt")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    table, _ = read_table(src)
    if len(table) == 0:
        raise ValueError(f"{src}: no training rows")
    data_sha = file_sha256(src)
    trainer: Trainer = KINDS[cfg.model.kind].part("trainer")(cfg, table)
    rng = torch.Generator().manual_seed(cfg.seed)
    config = to_mapping(cfg)
    start_epoch, history, seconds = 0, [], 0.0
    if ckpt_path.exists() and not restart:
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt["config"] != config or ckpt["data_sha256"] != data_sha:
            raise ValueError(f"{ckpt_path}: checkpoint of another config or training file; "
                             f"use restart (hpcxtal train --restart) or another -o")
        trainer.load_state(ckpt["state"])
        rng.set_state(ckpt["rng"])
        start_epoch, history, seconds = ckpt["epoch"], ckpt["history"], ckpt["seconds"]
        log.info("resuming %s at epoch %d of %d", ckpt_path, start_epoch, cfg.epochs)
    n = len(table)
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=rng)
        sums: dict[str, float] = {}
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo:lo + cfg.batch_size]
            parts = trainer.step({k: v[idx] for k, v in trainer.data.items()}, rng)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * len(idx)
        seconds += time.perf_counter() - t0
        history.append({k: v / n for k, v in sums.items()})
        log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, cfg.epochs,
                 ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items()), time.perf_counter() - t0)
        _save({"config": config, "data_sha256": data_sha, "epoch": epoch + 1,
               "state": trainer.state(), "rng": rng.get_state(), "history": history,
               "seconds": seconds}, ckpt_path)
    if end < cfg.epochs:
        log.info("stopped after epoch %d of %d; run again to continue", end, cfg.epochs)
        return {"epochs": end, "history": history, "seconds": seconds, "complete": False}
    state = trainer.model_state()
    buf = io.BytesIO()
    torch.save(state["weights"], buf)
    model_id = hashlib.sha256(buf.getvalue()).hexdigest()[:12]
    kind, n_parameters = trainer.kind, trainer.n_parameters()
    _save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "kind": kind, "model_id": model_id,
           "config": json.dumps(config), "seed": cfg.seed, "training_file": src.name,
           "training_sha256": data_sha, "n_training_rows": n, "n_parameters": n_parameters,
           "train_seconds": seconds, "history": json.dumps(history), **state}, dest)
    log.info("%s: %s %s, %d parameters, %d rows, %d epochs in %.0f s", dest, kind, model_id,
             n_parameters, n, cfg.epochs, seconds)
    return {"complete": True, "model_id": model_id, "kind": kind, "epochs": cfg.epochs,
            "history": history, "seconds": seconds, "n_parameters": n_parameters, "rows": n}
