"""Lightning training of a linear head on cached features (`LinearHead`, `fit_linear`): AdamW, a weight-decay
sweep on val, early stopping. One of Lightning's two homes (the other, data/distributed.py, holds the
Trainer settings both share). The torch L-BFGS logistic regression is in logreg.py.
"""
from __future__ import annotations

import copy
from typing import Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from toolkit.config import ProbeConfig
from toolkit.data.distributed import auto_precision, quiet_lightning, run_trainer, trainer_kwargs
from toolkit.fitting.result import FitResult
from toolkit.runtime import torch_threads


# ---------------------------------------------------------------- linear head on cached features


class LinearHead(L.LightningModule):
    """One linear layer over L2-normalized CLIP features, trained with cross-entropy and AdamW."""

    def __init__(self, embed_dim: int, n_classes: int, lr: float = 0.1, weight_decay: float = 0.0,
                 plateau_patience: int = 2, init_weight: Optional[np.ndarray] = None, init_bias: Optional[np.ndarray] = None):
        super().__init__()
        self.save_hyperparameters(ignore=["init_weight", "init_bias"])
        self.linear = nn.Linear(embed_dim, n_classes)
        if init_weight is not None:  # e.g. the zero-shot class embeddings times the logit scale
            with torch.no_grad():
                self.linear.weight.copy_(torch.as_tensor(np.asarray(init_weight), dtype=torch.float32))
                self.linear.bias.copy_(torch.as_tensor(np.asarray(init_bias), dtype=torch.float32)
                                       if init_bias is not None else torch.zeros(n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) features -> (n, C) logits."""
        return self.linear(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits.float(), y), on_epoch=True, prog_bar=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), on_epoch=True, prog_bar=True)

    def configure_optimizers(self):
        # fused=True: the CPU build here needs it, and it is the fast path on CUDA too
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                fused=True)
        # a high learning rate gets unit-norm features to useful logits fast; cutting it when the validation
        # loss stalls then settles the weights near the optimum (early stopping ends the run)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.3,
                                                             patience=self.hparams.plateau_patience)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


class KeepBest(Callback):
    """Keeps a copy of the weights at the lowest validation loss (EarlyStopping stops but doesn't roll back)."""

    def __init__(self) -> None:
        self.loss, self.acc, self.epoch, self.state = float("inf"), 0.0, -1, None

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        loss = float(trainer.callback_metrics["val_loss"])
        if loss < self.loss:
            self.loss, self.epoch = loss, trainer.current_epoch
            self.acc = float(trainer.callback_metrics["val_acc"])
            self.state = copy.deepcopy(module.state_dict())


def _loader(X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    ds = TensorDataset(torch.from_numpy(np.ascontiguousarray(X, np.float32)), torch.from_numpy(y.astype(np.int64)))
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None)


def _train_one(X_train, y_train, val_loader, n_classes: int, wd: float, cfg: ProbeConfig,
               init_weight, progress: bool) -> KeepBest:
    torch.manual_seed(cfg.seed)
    module = LinearHead(X_train.shape[1], n_classes, lr=cfg.lr, weight_decay=wd, init_weight=init_weight)
    best = KeepBest()
    trainer = L.Trainer(**trainer_kwargs(progress, max_epochs=cfg.max_epochs, callbacks=[
        # min_delta: once the learning rate has been cut a few times, gains of 1e-4 nats are not worth epochs
        EarlyStopping("val_loss", patience=cfg.patience, mode="min", min_delta=1e-4), best]))
    batch = min(cfg.batch_size, len(X_train))
    run_trainer(trainer.fit, module, _loader(X_train, y_train, batch, True, cfg.seed), val_loader)
    return best


def fit_linear(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, n_classes: int,
               cfg: ProbeConfig, init_weight: Optional[np.ndarray] = None, progress: bool = False) -> FitResult:
    """Sweep AdamW's weight decay (cfg.weight_decays); for each, train with early stopping on validation loss
    and keep the best epoch; pick the decay with the best validation accuracy (ties: lower loss).

    y are class indices 0..n_classes-1; init_weight (n_classes, D) starts the layer (bias 0) instead of
    random weights. Returns the chosen weights (no refit: the validation split decided when to stop).
    """
    val_loader = _loader(X_val, y_val, 4096, False, cfg.seed)
    sweep, runs = [], {}
    with quiet_lightning(progress), torch_threads(1):  # 1.1 ms/step vs 21 ms on 2 (busy CPU)
        for wd in cfg.weight_decays:
            best = _train_one(X_train, y_train, val_loader, n_classes, float(wd), cfg, init_weight, progress)
            runs[float(wd)] = best
            sweep.append({"param": "weight_decay", "value": float(wd), "val_accuracy": best.acc,
                          "val_loss": best.loss, "best_epoch": best.epoch})
    wd = min(runs, key=lambda w: (-runs[w].acc, runs[w].loss))
    state = runs[wd].state
    coef = state["linear.weight"].float().cpu().numpy()
    intercept = state["linear.bias"].float().cpu().numpy()
    logits = X_val.astype(np.float32) @ coef.T + intercept
    from toolkit.heads.base import softmax

    params = {"weight_decay": wd, "lr": cfg.lr, "optimizer": "AdamW", "batch_size": min(cfg.batch_size, len(X_train)),
              "best_epoch": runs[wd].epoch, "max_epochs": cfg.max_epochs, "patience": cfg.patience,
              "precision": auto_precision(), "accelerator": "gpu" if torch.cuda.is_available() else "cpu"}
    return FitResult({"coef_": coef, "intercept_": intercept}, params, sweep, softmax(logits))
