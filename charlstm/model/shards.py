"""A training step's batch split into row shards, each computed on its own core.

``--threads N`` is the number of cores a step uses: N shards (at most one per stream),
each running its BLAS calls on one thread, or on N // shards threads when the batch has
fewer streams than N.

The B streams of a chunk are independent until their gradients are summed, so the
batch is cut into contiguous row ranges, one per thread, and each shard runs the whole
forward and backward pass (its own Network, workspace and gradient buffer; the
parameters are shared and only read). The kernels release the GIL, and the BLAS uses
one thread per caller while the shards run: with two threads per caller on two cores
the calls fight (benchmarks/overlap_probe.py). At charlstm's step shapes one core per
shard beats two cores per product: the per-step [B, H] x [H, G*H] products gain little
from a second BLAS thread, while the gate math, softmax and the rest split evenly.

Each shard divides its loss by the whole chunk's prediction count, so the shards'
gradients add up to the chunk's; they are summed in shard order, so a run is
reproducible for a given number of shards. Different shard counts round differently in
the last bits of float32, as any change in summation order does.
"""
from __future__ import annotations

import os

import numpy as np

from charlstm.training.config import TrainConfig
from charlstm.parallel.handoff import SpinningWorker
from charlstm.kernels.blas import BLAS_THREADS
from charlstm.model.mixed import LowPrecisionWeights
from charlstm.model.parameters import FlatParams
from charlstm.model.network import Network


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(batch_size: int) -> int:
    """One shard per available core, and no shard without a row."""
    return max(1, min(available_cores(), batch_size))


def shard_bounds(batch: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous row ranges covering ``batch`` rows, the first ones a row longer when
    ``batch`` does not divide evenly."""
    base, extra = divmod(batch, shards)
    bounds, lo = [], 0
    for s in range(shards):
        hi = lo + base + (1 if s < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


class ShardedNetwork:
    """Network's training interface (``loss_and_grad``, ``grads``, ``zero_state``) on
    ``threads`` cores: the batch split into one row shard per core, each shard's BLAS
    calls on one thread. With fewer streams than threads (B=1, say), each shard's BLAS
    gets the cores left over. ``threads=1`` runs the whole batch on one core."""

    def __init__(self, config: TrainConfig, vocab_size: int, params: FlatParams, threads: int):
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.threads = threads
        self.params = params
        # The bfloat16 copies of the weights (mixed precision): made once per step, here,
        # and read by every shard.
        self.low_precision_weights = (
            LowPrecisionWeights(params, config.num_layers, config.bf16_products)
            if config.precision == "bfloat16" else None)
        self.nets = [Network(config, vocab_size, params, self.low_precision_weights)
                     for _ in range(min(threads, config.batch_size))]
        # Shard 0's buffer receives the sum, so the sum needs no extra pass.
        self.grads = self.nets[0].grads
        self._workers: list[SpinningWorker] = []  # started by the first sharded step

    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        return self.nets[0].zero_state(batch)

    def loss_sum(self, inputs: np.ndarray, targets: np.ndarray, state: dict, masks=None) -> float:
        """Summed cross-entropy of the chunk, no gradients, in this thread: evaluation
        reads one stream, which cannot be split."""
        return self.nets[0].loss_sum(inputs, targets, state, masks)

    def loss_and_grad(self, inputs: np.ndarray, targets: np.ndarray, state: dict,
                      masks=None, mean_over: int | None = None) -> float:
        """As Network.loss_and_grad: the mean loss of the chunk, its gradient in
        ``self.grads``, and ``state`` carried to the chunk's end. ``mean_over``: the
        prediction count to divide by, when these rows are a rank's part of a larger
        batch (ranks.py); default B*T."""
        B, T = inputs.shape
        N = B * T if mean_over is None else mean_over
        bounds = shard_bounds(B, min(len(self.nets), B))

        def run(s: int) -> float:
            lo, hi = bounds[s]
            rows = {key: value[:, lo:hi] for key, value in state.items()}
            shard_masks = None if masks is None else masks[:, :, lo:hi]
            return self.nets[s].loss_and_grad(inputs[lo:hi], targets[lo:hi], rows,
                                              shard_masks, mean_over=N)

        if self.low_precision_weights is not None:
            self.low_precision_weights.refresh()
        if len(bounds) > 1 and not self._workers:
            self._workers = [SpinningWorker(f"charlstm-shard-{s}") for s in range(1, len(self.nets))]
        before = BLAS_THREADS.get()
        BLAS_THREADS.set(max(1, self.threads // len(bounds)))
        others = self._workers[:len(bounds) - 1]
        for s, worker in enumerate(others, start=1):
            worker.submit(run, s)
        try:
            first = run(0)
        finally:
            # No shard may still be running when this returns or raises.
            outcomes = [_outcome(worker) for worker in others]
            if before is not None:
                BLAS_THREADS.set(before)
        losses = [first]
        for value, error in outcomes:
            if error is not None:
                raise error
            losses.append(value)
        total = self.grads.flat
        for net in self.nets[1:len(bounds)]:
            total += net.grads.flat
        return float(sum(losses))

    def close(self) -> None:
        """Stop the shard threads; a later step starts them again."""
        for worker in self._workers:
            worker.close()
        self._workers = []


def _outcome(worker: SpinningWorker) -> tuple:
    """(value, None) or (None, the exception) of the worker's job."""
    try:
        return worker.result(), None
    except BaseException as e:  # noqa: BLE001 -- raised by the caller once all have returned
        return None, e
