"""Training the row generator: checkpoints every epoch, resumable, reproducible.

``train(training.h5, model.pt, cfg)`` fits the GMM transform and the condition sampler
on the training table, then trains the (C)VAE. Every epoch ends with an atomic
checkpoint (``model.pt.ckpt``: weights, optimiser, the torch RNG used for shuffling and
noise, loss history); a run that finds a checkpoint of the same config and data resumes
from it, and gives the same weights as an uninterrupted run. The finished model file
holds the config, seed, data checksum, GMM, condition sampler, loss history and the
weights (float16, to keep the shipped default small).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hpcxtal.config import to_mapping
from hpcxtal.generate.conditions import ConditionSampler
from hpcxtal.generate.cvae import ModelConfig, RowVAE, condition_onehot, model_size
from hpcxtal.generate.gmm import ColumnGMM, free_mask, row_values
from hpcxtal.store.hdf5 import atomic_path, file_sha256, read_table

log = logging.getLogger(__name__)
MODEL_FORMAT = "hpcxtal-generator"
MODEL_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training schedule (published: batch 2048, 250 epochs) and the network."""

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 20
    batch_size: int = 2048
    learning_rate: float = 1e-3
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be >= 1, learning_rate > 0")


def encode_table(table, gmm: ColumnGMM | None, k: int, seed: int) -> tuple[dict[str, torch.Tensor], ColumnGMM]:
    """Tensors the model trains on (GMM fitted here if ``gmm`` is None)."""
    values = row_values(table["cell"], table["xyz"])
    mask = free_mask(table["spg"], table["wps"])
    if gmm is None:
        gmm = ColumnGMM.fit(values, mask, k, seed)
    comp, resid = gmm.encode(values)
    resid = np.where(mask, np.clip(resid, -20, 20), 0.0)
    comp = np.where(mask, comp, 0)
    spg = torch.as_tensor(table["spg"].astype(np.int64))
    wps = torch.as_tensor(table["wps"].astype(np.int64))
    return {"comp": torch.as_tensor(comp, dtype=torch.long),
            "resid": torch.as_tensor(resid, dtype=torch.float32),
            "mask": torch.as_tensor(mask), "cond": condition_onehot(spg, wps)}, gmm


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _state_tensors(state: dict) -> dict:
    return {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, float) else v
            for k, v in state.items()}


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
    data_sha = file_sha256(src)
    data, gmm = encode_table(table, None, cfg.model.n_components, cfg.seed)
    sampler = ConditionSampler.fit(table["spg"], table["wps"])
    active = torch.as_tensor(gmm.active)
    torch.manual_seed(cfg.seed)
    model = RowVAE(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    rng = torch.Generator().manual_seed(cfg.seed)
    config = to_mapping(cfg)
    start_epoch, history, seconds = 0, [], 0.0
    if ckpt_path.exists() and not restart:
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt["config"] != config or ckpt["data_sha256"] != data_sha:
            raise ValueError(f"{ckpt_path}: checkpoint of another config or training file; "
                             f"use restart (hpcxtal train --restart) or another -o")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.set_state(ckpt["rng"])
        start_epoch, history, seconds = ckpt["epoch"], ckpt["history"], ckpt["seconds"]
        log.info("resuming %s at epoch %d of %d", ckpt_path, start_epoch, cfg.epochs)
    n = len(table)
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, end):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=rng)
        sums: dict[str, float] = {}
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo:lo + cfg.batch_size]
            batch = {k: v[idx] for k, v in data.items()}
            noise = torch.randn(len(idx), cfg.model.latent_dim, generator=rng)
            loss, parts = model.loss(batch, noise, active)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * len(idx)
        seconds += time.perf_counter() - t0
        history.append({k: v / n for k, v in sums.items()})
        log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, cfg.epochs,
                 ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items()), time.perf_counter() - t0)
        _save({"config": config, "data_sha256": data_sha, "epoch": epoch + 1,
               "model": model.state_dict(), "optimizer": opt.state_dict(),
               "rng": rng.get_state(), "history": history, "seconds": seconds}, ckpt_path)
    if end < cfg.epochs:
        log.info("stopped after epoch %d of %d; run again to continue", end, cfg.epochs)
        return {"epochs": end, "history": history, "seconds": seconds, "complete": False}
    weights = {k: v.detach().half() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(weights, buf)
    model_id = hashlib.sha256(buf.getvalue()).hexdigest()[:12]
    kind = "cvae" if cfg.model.conditional else "vae"
    _save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "kind": kind, "model_id": model_id,
           "config": json.dumps(config), "seed": cfg.seed, "training_file": src.name,
           "training_sha256": data_sha, "n_training_rows": n, "n_parameters": model_size(model),
           "train_seconds": seconds, "history": json.dumps(history),
           "gmm": _state_tensors(gmm.state()), "conditions": _state_tensors(sampler.state()),
           "weights": weights}, dest)
    log.info("%s: %s %s, %d parameters, %d rows, %d epochs in %.0f s", dest, kind, model_id,
             model_size(model), n, cfg.epochs, seconds)
    return {"complete": True, "model_id": model_id, "kind": kind, "epochs": cfg.epochs,
            "history": history,
            "seconds": seconds, "n_parameters": model_size(model), "rows": n}
