"""Training batches as a pure function of (seed, iteration): what resume and multi-process
training need to see exactly the images a single uninterrupted run would.

The run consumes an endless stream of sample positions t = 0, 1, 2, ...; iteration i of a run with
global batch B takes positions i*B .. i*B + B - 1, and process r of W takes its contiguous share.
Position t is image perm_e[t mod N] of epoch e = t div N (a permutation seeded by (seed, e)),
augmented with a generator seeded by (seed, t).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import Dataset

from yolact_torch.data.augment import Example, TrainAugmentation, discard_small, eval_transform
from yolact_torch.data.coco import CocoDataset
from yolact_torch.losses import Target

AUGMENT_RETRIES = 10  # draws before falling back to the plain transform (all instances cropped away)


class TrainingStream(Dataset):
    """Indexed by stream position t (any int >= 0); item = (image float32 [S, S, 3] BGR 0..255, Target)."""

    def __init__(self, dataset: CocoDataset, augmentation: TrainAugmentation, seed: int):
        self.dataset = dataset
        self.augmentation = augmentation
        self.seed = seed

    @functools.lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def __len__(self) -> int:  # positions are unbounded; this is one epoch
        return len(self.dataset)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, Target]:
        epoch, offset = divmod(int(position), len(self.dataset))
        sample = self.dataset[int(self._permutation(epoch)[offset])]
        example = Example(sample.image.astype(np.float32), sample.masks, sample.boxes, sample.labels)
        rng = np.random.default_rng([self.seed, int(position), 1])
        for _ in range(AUGMENT_RETRIES):
            out = self.augmentation(example, rng)
            if len(out.labels):
                break
        else:
            out = discard_small(eval_transform(example, self.augmentation.cfg), self.augmentation.cfg)
        target = Target(torch.from_numpy(out.boxes), torch.from_numpy(out.labels), torch.from_numpy(out.masks))
        return torch.from_numpy(np.ascontiguousarray(out.image)), target


class IterationBatches:
    """Batch sampler: for iterations start..stop-1, this process's list of stream positions."""

    def __init__(self, start: int, stop: int, global_batch: int, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f'batch size {global_batch} is not divisible by {world_size} processes: '
                             'choose a multiple of the process count')
        self.start, self.stop = start, stop
        self.global_batch, self.local_batch = global_batch, global_batch // world_size
        self.rank = rank

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self):
        for iteration in range(self.start, self.stop):
            first = iteration * self.global_batch + self.rank * self.local_batch
            yield list(range(first, first + self.local_batch))


def collate(items: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """-> (images float32 [B, S, S, 3] BGR, list of B targets)."""
    images, targets = zip(*items)
    return torch.stack(images), list(targets)
