from typing import Iterator

import torch

from trainables.data.augment import augment_batch, normalize, view_of_batch, view_params

# The training images stay on a CUDA device when they take at most this much of it (CIFAR's 50,000 32x32
# images are 154 MB); larger sets (ImageNet-size images) stay in pinned host memory and each batch is
# copied on its own, asynchronously. Several trials can share one GPU, each with its own copy.
DEVICE_DATA_MAX_BYTES = 2 * 1024 ** 3
DEVICE_DATA_MAX_SHARE = 0.1


def to_device(t: torch.Tensor, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """A host tensor (a gathered batch) on `device` as `dtype`. To CUDA it goes through pinned memory with
    a non-blocking copy (PyTorch's caching host allocator keeps the pinned block until the copy is done),
    so the training loop does not wait for it; the cast happens on the device."""
    if device.type != "cuda":
        return t.to(dtype)
    return t.pin_memory().to(device, non_blocking=True).to(dtype)


def keeps_on_device(nbytes: int, device: torch.device, total_memory: int | None = None) -> bool:
    """Whether a training set of `nbytes` is copied whole to `device`: always on the CPU; on CUDA when it
    is at most DEVICE_DATA_MAX_BYTES and DEVICE_DATA_MAX_SHARE of the device's memory (`total_memory`,
    default the device's own)."""
    if device.type != "cuda":
        return True
    if total_memory is None:
        total_memory = torch.cuda.get_device_properties(device).total_memory
    return nbytes <= min(DEVICE_DATA_MAX_BYTES, DEVICE_DATA_MAX_SHARE * total_memory)


class DeviceLoader:
    """Batches from a uint8 image tensor kept on the training device (or, too large for it, in pinned
    host memory).

    Shuffling and augmentation draw from one CPU generator, which is part of the run state, so a
    restored run sees exactly the batches it would have seen. The batch order stays on the host and is
    copied to the device once per epoch, so no batch waits for a device-to-host copy: each batch's rows
    are known on both sides (the teacher cache gathers on the host, the images on the device).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std,
                 device: torch.device, train: bool, generator: torch.Generator | None = None,
                 channels_last: bool = False, on_device: bool | None = None):
        device = torch.device(device)
        self.device = device
        # on_device: None decides by size (keeps_on_device); False keeps the images on the host.
        self.on_device = keeps_on_device(images.nelement() * images.element_size(), device) if on_device is None \
            else on_device
        if self.on_device:
            self.images = images.to(device)
        elif device.type == "cuda" and not images.is_pinned():
            self.images = images.pin_memory()  # pinned, so each batch's copy can overlap the training
        else:
            self.images = images
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
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        order_dev = order.to(self.device, non_blocking=True) if self.device.type == "cuda" else order
        params = view_params(n, view_seed, view, self.images.shape[-1]) if self.train and view is not None else None
        if params is not None:  # each view's parameters go to the device once, indexed there by the batch rows
            params = tuple(p.to(self.device) for p in params)
        for i in range(len(self)):
            rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx, idx_dev = order[rows], order_dev[rows]
            images = self.images[idx_dev] if self.on_device else to_device(self.images[idx], self.device, torch.uint8)
            if params is not None:
                x = view_of_batch(images, idx_dev, params)
            elif self.train:
                x = augment_batch(images, self.generator)
            else:
                x = images
            x = normalize(x, self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx_dev], idx
