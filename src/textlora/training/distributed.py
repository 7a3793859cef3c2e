"""Data-parallel training: every process gets its share of each global batch.

``train.batch_size`` is the global batch: with N processes (``torchrun``/``accelerate launch``)
each one takes every N-th row of every batch, so the batches, the number of optimizer steps and
the learning-rate schedule are those of a single-process run, and the results agree up to float
rounding.

accelerate's own sharding is not used for the training loader: it assumes every batch but the
last is full, and drops (default) or pads (``split_batches``) the short batches that length
grouping makes at the end of every pool.
"""

from __future__ import annotations

from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader


class ShardedBatches(torch.utils.data.Sampler):
    """This process's share of every batch of ``batches``: rows ``shard``, ``shard + n``, ...

    Rows are taken with a stride so that each process gets texts of every length in the batch
    (batches are length-sorted inside). A batch with fewer rows than processes gives the
    processes left without a row one of its rows again (no process may run an empty step).
    """

    def __init__(self, batches: torch.utils.data.Sampler, num_shards: int, shard: int):
        self.batches, self.num_shards, self.shard = batches, num_shards, shard

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.shard::self.num_shards] or [batch[self.shard % len(batch)]]

    def __len__(self) -> int:
        return len(self.batches)


def prepare_train_loader(accelerator: Accelerator, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """``loader`` (a batch-sampler DataLoader) as this process's loader, batches placed on its device.

    Returns accelerate's loader (``set_epoch``, ``skip_first_batches`` work as usual) over
    :class:`ShardedBatches`.
    """
    sampler = ShardedBatches(loader.batch_sampler, accelerator.num_processes, accelerator.process_index)
    # A private generator: each new iterator draws a seed from it. Drawn from the global RNG, that
    # draw would shift every dropout mask after a mid-epoch resume, which creates one iterator more.
    own = torch.utils.data.DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=loader.collate_fn,
                                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                                      generator=torch.Generator())
    # num_processes=1: the sampler above already did the sharding.
    return prepare_data_loader(own, accelerator.device, num_processes=1, process_index=0,
                               put_on_device=True, rng_types=None)
