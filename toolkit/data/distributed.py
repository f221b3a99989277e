"""Distributed feature extraction's Lightning half: a caller's job run over devices and nodes with
Trainer.predict (`run_sharded`), and the Trainer settings every clipkit Lightning run shares (accelerator,
precision, quiet logs, interrupts given back). Lightning's second home beside fitting/trainer.py, which
imports these settings from here (fitting sits above data).
"""
from __future__ import annotations

import logging
import signal
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader

# ---------------------------------------------------------------- shared trainer settings


def auto_precision() -> str:
    """Mixed precision on a GPU (bf16 where supported), full fp32 on CPU."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def trainer_kwargs(progress: bool = False, **overrides: Any) -> dict[str, Any]:
    """Trainer arguments shared by every clipkit trainer: automatic accelerator, no files, no log spam."""
    kw = dict(accelerator="auto", devices=1, precision=auto_precision(), logger=False, enable_checkpointing=False,
              enable_model_summary=False, enable_progress_bar=progress, num_sanity_val_steps=0,
              deterministic=False)
    kw.update(overrides)
    return kw


@contextmanager
def quiet_lightning(verbose: bool = False) -> Iterator[None]:
    """Silence Lightning's INFO banners ("GPU available: ...") and its advice-only warnings."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    with warnings.catch_warnings():
        if not verbose:
            for n in names:
                logging.getLogger(n).setLevel(logging.WARNING)
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's pytree shim on this torch
        try:
            yield
        finally:
            for n, lvl in levels.items():
                logging.getLogger(n).setLevel(lvl)


def run_trainer(method, *args: Any, **kwargs: Any) -> Any:
    """Call a Trainer method (fit, predict, ...), giving back the interrupts Lightning turns into SystemExit.

    Lightning catches KeyboardInterrupt (Ctrl-C, or SIGTERM made one by the CLI) and calls sys.exit(1): raised
    again here as itself, so a tracked run ends KILLED. A SIGTERM that no handler raised on becomes Lightning's
    SIGTERMException, a SystemExit with no code (exit 0, as if training had succeeded): the signal is delivered
    again to the handler Lightning displaced (the default one ends the process as SIGTERM should)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        return method(*args, **kwargs)
    except SystemExit as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None
        if isinstance(e, SIGTERMException):
            signal.raise_signal(signal.SIGTERM)
        raise


# ---------------------------------------------------------------- work sharded over processes
# Trainer.predict with DDP runs a job's batches over devices x nodes processes (gloo on CPU, NCCL on GPUs). The
# job itself (what a batch is, what a step does with it) belongs to its caller: see extraction.py.


class ShardedJob(L.LightningModule):
    """Wraps a job for Trainer.predict. The job has `model` (an nn.Module Lightning places on each rank's
    device), `loader(rank, world_size, local_processes, device) -> DataLoader`, `start(device)` and
    `step(batch)`; every rank waits for the others at the end."""

    def __init__(self, job: Any):
        super().__init__()
        self.job, self.model = job, job.model  # registered, so Lightning moves it per rank

    def predict_dataloader(self) -> DataLoader:
        return self.job.loader(self.trainer.global_rank, self.trainer.world_size, max(1, self.trainer.num_devices),
                               self.device)

    def on_predict_start(self) -> None:
        self.job.start(self.device)

    def predict_step(self, batch, batch_idx: int) -> None:
        self.job.step(batch)

    def on_predict_end(self) -> None:
        self.trainer.strategy.barrier("clipkit-sharded")  # every rank's work is done before the caller goes on


def run_sharded(job: Any, accelerator: str = "cpu", devices: int = 1, num_nodes: int = 1, strategy: str = "ddp",
                progress: bool = False) -> tuple[int, int]:
    """Run `job` (see ShardedJob) over devices x num_nodes processes; returns (global rank, world size).

    With the "ddp" strategy Lightning re-runs the calling command in each extra local process, which then
    arrives here too."""
    with quiet_lightning(progress), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*predict returned None.*")  # on purpose: steps write results
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's pytree shim on this torch
        trainer = L.Trainer(**trainer_kwargs(progress, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                                             strategy=strategy, precision="32-true", use_distributed_sampler=False))
        run_trainer(trainer.predict, ShardedJob(job), return_predictions=False)
    return trainer.global_rank, trainer.world_size
