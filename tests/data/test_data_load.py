"""load_data: every spec form on generated IDX files, the built-in sets, @N, and real MNIST when present."""

from pathlib import Path

import numpy as np
import pytest
import torch

from modelzip.data import DataBundle, load_data, write_idx
from modelzip.errors import DataError

REAL_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_set(folder: Path, names=MNIST_NAMES, *, n_train=50, n_test=20, side=28, suffix=".gz", labels=None):
    """Write a small random IDX data set (labels cycle 0..9) and return its arrays."""
    rng = np.random.default_rng(1)
    arrays = [
        rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        np.arange(n_train, dtype=np.uint8) % 10 if labels is None else labels[0],
        rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        np.arange(n_test, dtype=np.uint8) % 10 if labels is None else labels[1],
    ]
    folder.mkdir(exist_ok=True)
    for name, array in zip(names, arrays):
        write_idx(folder / f"{name}{suffix}", array)
    return arrays


@pytest.mark.parametrize("form", ["mnist", "idx"])
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_folder_loads_scaled_tensors(tmp_path, form, suffix):
    x_train, y_train, x_test, _ = write_set(tmp_path, suffix=suffix)
    bundle = load_data(f"{form}:{tmp_path}")
    assert isinstance(bundle, DataBundle) and bundle.name == f"{form}:{tmp_path}"
    images, labels = bundle.train.tensors
    assert images.shape == (50, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (50,) and labels.dtype == torch.int64
    assert bundle.test.tensors[0].shape == (20, 1, 28, 28)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert 0 <= images.min() and images.max() <= 1
    np.testing.assert_array_equal(images[:, 0].numpy(), x_train.astype(np.float32) / 255)
    np.testing.assert_array_equal(labels.numpy(), y_train)
    assert bundle.test.tensors[0][3, 0, 5, 7].item() == pytest.approx(x_test[3, 5, 7] / 255)


def test_idx_finds_files_by_the_words_in_their_names(tmp_path):
    names = ("fashion-train-images", "fashion_train_labels", "fashion-test-images.idx", "FASHION-TEST-LABELS.idx")
    write_set(tmp_path, names, side=6, suffix="")
    (tmp_path / "README.md").write_text("not data")
    bundle = load_data(f"idx:{tmp_path}")
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (50, 20, (1, 6, 6))


def test_idx_ambiguous_and_missing_files_are_listed(tmp_path):
    write_set(tmp_path, suffix=".gz")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 2, 2), np.uint8))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_data(f"idx:{tmp_path}")
    message = str(info.value)
    assert "train-images: ambiguous, train-images-idx3-ubyte, train-images-idx3-ubyte.gz" in message
    assert "test-labels: none" in message
    assert "t10k-images-idx3-ubyte.gz" in message  # what was found


def test_idx_not_a_directory(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: cannot list directory \(No such file or directory\)"):
        load_data(f"idx:{tmp_path / 'nowhere'}")


def test_mnist_missing_file_is_named(tmp_path):
    write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing MNIST file\(s\) t10k-labels-idx1-ubyte\[.gz\]"):
        load_data(f"mnist:{tmp_path}")


def test_mnist_requires_28x28(tmp_path):
    write_set(tmp_path, side=8)
    with pytest.raises(DataError, match=r"MNIST images are 28x28, these are \(1, 8, 8\)"):
        load_data(f"mnist:{tmp_path}")


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (
            (np.zeros(49, np.uint8), np.zeros(20, np.uint8)),
            "train-images-idx3-ubyte.gz / train-labels-idx1-ubyte.gz: 50 images but 49 labels",
        ),
        ((np.zeros(50, np.uint8), np.full(20, -1, np.int8)), "t10k-labels-idx1-ubyte.gz: negative label -1"),
        ((np.zeros(50, np.float32), np.zeros(20, np.uint8)), "labels must be integers, got float32"),
    ],
)
def test_bad_labels(tmp_path, labels, fragment):
    write_set(tmp_path, labels=labels)
    with pytest.raises(DataError) as info:
        load_data(f"mnist:{tmp_path}")
    assert fragment in str(info.value)


def test_num_classes_counts_train_and_test(tmp_path):
    write_set(tmp_path, labels=(np.arange(50, dtype=np.uint8) % 5, np.full(20, 7, np.uint8)))
    assert load_data(f"mnist:{tmp_path}").num_classes == 8


def test_float_images_are_taken_as_is_and_checked(tmp_path):
    write_set(tmp_path)
    pixels = np.linspace(0, 1, 20 * 28 * 28, dtype=np.float32).reshape(20, 28, 28)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pixels)
    assert torch.equal(load_data(f"mnist:{tmp_path}").test.tensors[0][:, 0], torch.from_numpy(pixels))

    pixels[2, 3, 4] = np.nan
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pixels)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz / t10k-labels-idx1-ubyte.gz: images contain NaN"):
        load_data(f"mnist:{tmp_path}")

    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.full_like(pixels, 2))
    with pytest.raises(DataError, match=r"must lie in \[0, 1\], found \[2, 2\]"):
        load_data(f"mnist:{tmp_path}")


@pytest.mark.parametrize("spec", ["cifar10", "mnist:", "idx:@5", "mnist5k@", "Digits"])
def test_unknown_spec_lists_the_valid_forms(spec):
    valid = "valid forms: mnist5k, embedded, digits, mnist:DIR, idx:DIR, each with optional @N"
    with pytest.raises(DataError, match=f"unknown data spec '{spec}'; {valid}"):
        load_data(spec)


@pytest.fixture(scope="module")
def mnist5k() -> DataBundle:
    return load_data()


def test_mnist5k_is_a_stratified_4000_1000_split(mnist5k):
    assert mnist5k.name == "mnist5k"
    assert (len(mnist5k.train), len(mnist5k.test)) == (4000, 1000)
    assert mnist5k.input_shape == (1, 28, 28) and mnist5k.num_classes == 10
    assert torch.bincount(mnist5k.train.tensors[1]).tolist() == [400] * 10
    assert torch.bincount(mnist5k.test.tensors[1]).tolist() == [100] * 10
    images = mnist5k.train.tensors[0]
    assert images.dtype == torch.float32 and images.min() == 0 and images.max() == 1
    assert 0.1 < images.mean() < 0.2  # real digits: mostly black background


def test_mnist5k_split_depends_on_seed_only(mnist5k):
    again, other = load_data("embedded"), load_data("mnist5k", seed=1)
    assert torch.equal(again.train.tensors[0], mnist5k.train.tensors[0])
    assert torch.equal(again.test.tensors[1], mnist5k.test.tensors[1])
    assert not torch.equal(other.train.tensors[0], mnist5k.train.tensors[0])
    assert torch.bincount(other.test.tensors[1]).tolist() == [100] * 10


def test_digits():
    bundle = load_data("digits")
    images, labels = bundle.train.tensors
    assert (len(bundle.train), len(bundle.test)) == (1437, 360)
    assert images.shape == (1437, 1, 8, 8) and bundle.input_shape == (1, 8, 8)
    assert images.min() == 0 and images.max() == 1 and bundle.num_classes == 10
    assert torch.bincount(bundle.test.tensors[1]).min() >= 35  # stratified: ~36 of each


def test_limit_keeps_n_shuffled_training_examples(mnist5k):
    small = load_data("mnist5k@100")
    assert small.name == "mnist5k@100"
    assert (len(small.train), len(small.test)) == (100, 1000)
    assert torch.equal(small.test.tensors[0], mnist5k.test.tensors[0])
    # rows of the full train set, not simply its first 100
    full = {row.numpy().tobytes() for row in mnist5k.train.tensors[0]}
    assert all(row.numpy().tobytes() in full for row in small.train.tensors[0])
    assert not torch.equal(small.train.tensors[0], mnist5k.train.tensors[0][:100])
    assert torch.equal(load_data("mnist5k@100").train.tensors[1], small.train.tensors[1])
    assert not torch.equal(load_data("mnist5k@100", seed=3).train.tensors[0], small.train.tensors[0][:100])


def test_limit_on_an_idx_folder(tmp_path):
    write_set(tmp_path)
    bundle = load_data(f"mnist:{tmp_path}@7")
    assert (len(bundle.train), len(bundle.test)) == (7, 20)


@pytest.mark.parametrize("n", [0, 51])
def test_limit_out_of_range(tmp_path, n):
    write_set(tmp_path)
    with pytest.raises(DataError, match=f"@{n} must be between 1 and the 50 training examples"):
        load_data(f"idx:{tmp_path}@{n}")


def test_real_mnist():
    if not (REAL_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {REAL_MNIST}")
    bundle = load_data(f"mnist:{REAL_MNIST}")
    assert (len(bundle.train), len(bundle.test)) == (60000, 10000)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(bundle.test.tensors[1]).tolist() == counts
