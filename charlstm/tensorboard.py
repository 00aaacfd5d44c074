"""A run's progress as TensorBoard event files (tensorboardX, the optional extra
``charlstm[tensorboard]``). metrics.jsonl stays the record of a run; this writes the
same rows where TensorBoard looks: bits per character (train, val), learning rate,
gradient norm and characters per second against the step, and at the end the run's
hyperparameters with its best validation score, for TensorBoard's HParams view."""
from __future__ import annotations

import math
from pathlib import Path

from .errors import UserError

HINT = "--tensorboard needs tensorboardX: pip install 'charlstm[tensorboard]'"
SCALARS = {"train_bpc": "bpc/train", "val_bpc": "bpc/val", "lr": "lr", "grad_norm": "grad_norm",
           "chars_per_s": "chars_per_s"}


class TensorBoardLog:
    """Writes metrics rows (dicts as metrics.jsonl holds them) to event files in ``out``."""

    def __init__(self, out: Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UserError(HINT) from None
        self.writer = SummaryWriter(logdir=str(out))

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for key, tag in SCALARS.items():
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self, config, best_val_bpc: float) -> None:
        """Record the hyperparameters (every setting that is a number or a string) with
        the run's best validation bpc, and close the files."""
        hparams = {k: v for k, v in config.to_json_dict().items()
                   if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        hparams["corpus"] = ",".join(config.corpus) or "builtin:pydoc"
        best = float("nan") if best_val_bpc is None else best_val_bpc
        # In a subdirectory of its own: a second writer in the same one could pick the
        # same file name (it is the time in seconds) and interleave with the first.
        self.writer.add_hparams(hparams, {"hparam/best_val_bpc": best}, name="hparams")
        self.writer.close()
