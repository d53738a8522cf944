from typing import Iterator

import torch

from trainables.data.augment import augment_batch, normalize, view_batch, view_params


class DeviceLoader:
    """Batches from a uint8 image tensor kept on the training device.

    Shuffling and augmentation draw from one CPU generator, which is part of the run state, so a
    restored run sees exactly the batches it would have seen.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std,
                 device: torch.device, train: bool, generator: torch.Generator | None = None,
                 channels_last: bool = False):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = int(batch_size)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device)
        self.train = train
        self.generator = generator
        self.channels_last = channels_last

    def __len__(self) -> int:
        n = self.images.shape[0]
        if self.train and n > self.batch_size:
            return n // self.batch_size  # drop the ragged tail: a batch of one breaks BatchNorm
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.batches():
            yield x, y

    def batches(self, view: int | None = None, view_seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images, labels, indices into the dataset). With `view`, training crops and flips are the fixed
        ones of that view (see trainables.teacher_cache) instead of fresh draws from the generator."""
        n = self.images.shape[0]
        if self.train:
            order = torch.randperm(n, generator=self.generator).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        params = view_params(n, view_seed, view, self.images.shape[-1]) if self.train and view is not None else None
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if params is not None:
                x = view_batch(self.images, idx, params)
            elif self.train:
                x = augment_batch(self.images[idx], self.generator)
            else:
                x = self.images[idx]
            x = normalize(x, self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx], idx
