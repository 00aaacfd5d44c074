"""A run's progress as TensorBoard event files (tensorboardX, the optional extra
``charlstm[tensorboard]``). metrics.jsonl stays the record of a run; this writes the
same rows where TensorBoard looks: bits per character (train, val), learning rate,
gradient norm and characters per second against the step, and at the end the run's
hyperparameters with its best validation score, for TensorBoard's HParams view.

Events are written in this process, as they come: tensorboardX's SummaryWriter writes
from a thread of its own, where a full disk ended the thread with a traceback and left
training blocked on the writer's queue once it filled.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from charlstm.errors import UserError

HINT = "--tensorboard needs tensorboardX: pip install 'charlstm[tensorboard]'"
SCALARS = {"train_bpc": "bpc/train", "val_bpc": "bpc/val", "lr": "lr", "grad_norm": "grad_norm",
           "chars_per_s": "chars_per_s"}
HPARAMS_DIR = "hparams"
TRAINING_FIX = ("training stopped with the last checkpoint intact: free space, or resume "
                "without --tensorboard")


class TensorBoardLog:
    """Writes metrics rows (dicts as metrics.jsonl holds them) to an event file in
    ``out``. A write that fails raises UserError naming ``shown_as`` (default ``out``)
    and ending with ``fix``; after it the log writes nothing more."""

    def __init__(self, out: Path, fix: str = TRAINING_FIX, shown_as: Path | None = None):
        try:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto import event_pb2
            from tensorboardX.summary import hparams, scalar
        except ImportError:
            raise UserError(HINT) from None
        self._make_writer, self._event, self._scalar, self._hparams = (
            EventsWriter, event_pb2.Event, scalar, hparams)
        self.out, self.fix = Path(out), fix
        self.shown_as = Path(shown_as) if shown_as is not None else self.out
        self.failed = False
        self.writer = None
        with self._reporting():
            self.writer = EventsWriter(os.path.join(self.out, "events"))

    def write(self, row: dict) -> None:
        """The row's values (NaN and missing ones left out) against its step."""
        if self.failed:
            return
        step = int(row["step"])
        with self._reporting():
            for key, tag in SCALARS.items():
                value = row.get(key)
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self._add(self.writer, self._scalar(tag, float(value)), step)
            self.writer.flush()

    def close(self, config, best_val_bpc: float) -> None:
        """Record the hyperparameters (every setting that is a number or a string) with
        the run's best validation bpc, and close the files."""
        if self.failed:
            return
        hparams = {k: v for k, v in config.to_json_dict().items()
                   if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        hparams["corpus"] = ",".join(config.corpus) or "builtin:pydoc"
        best = float("nan") if best_val_bpc is None else best_val_bpc
        metric = {"hparam/best_val_bpc": best}
        with self._reporting():
            self.writer.close()
            # In a subdirectory of its own, as tensorboardX's add_hparams writes them:
            # TensorBoard reads a session's hyperparameters from a run of their own.
            directory = self.out / HPARAMS_DIR
            directory.mkdir(exist_ok=True)
            writer = self._make_writer(os.path.join(directory, "events"))
            for summary in self._hparams(hparams, metric):
                self._add(writer, summary, None)
            self._add(writer, self._scalar("hparam/best_val_bpc", best), None)
            writer.close()
        self.failed = True  # closed: nothing more goes in

    def _add(self, writer, summary, step) -> None:
        event = self._event(summary=summary, wall_time=time.time())
        if step is not None:
            event.step = step
        writer.write_event(event)

    @contextmanager
    def _reporting(self):
        """Turn an OSError in the block into the log's one-line UserError."""
        try:
            yield
        except OSError as e:
            self.failed = True
            try:
                if self.writer is not None:
                    self.writer.close()
            except OSError:
                pass  # the error being reported says why
            raise UserError(f"cannot write TensorBoard events to {self.shown_as} "
                            f"({e.strerror or e}); {self.fix}") from None
