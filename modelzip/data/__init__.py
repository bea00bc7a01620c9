"""Data sets for training and evaluating compressed models: loading, IDX files, splits and batches."""

from modelzip.data.augment import jitter
from modelzip.data.batching import Calibration, batches, calibration_batches
from modelzip.data.bundle import DataBundle
from modelzip.data.idx import read_idx, write_idx
from modelzip.data.sources import load_data
from modelzip.data.subsets import sample, split

__all__ = ["Calibration", "DataBundle", "batches", "calibration_batches", "jitter", "load_data", "read_idx",
           "sample", "split", "write_idx"]
