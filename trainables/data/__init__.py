"""Datasets as uint8 tensors, split once, augmented on the training device in whole batches."""
from trainables.data.augment import augment_batch, normalize
from trainables.data.loader import DeviceLoader
from trainables.data.splits import DATASETS, DataSplits, load_splits

__all__ = ["augment_batch", "normalize", "DeviceLoader", "DataSplits", "load_splits", "DATASETS"]
