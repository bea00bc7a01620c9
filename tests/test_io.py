import pytest
import torch
from torch import nn

import modelzip
from modelzip.errors import FormatError, ModelError, TruncatedError
from modelzip.io import dense_bytes, same_weights
from modelzip.layers import strip
from modelzip.models import build
from modelzip.prune import prune_
from modelzip.quantize import quantize_


@pytest.fixture(scope="module")
def compressed_lenet5():
    torch.manual_seed(0)
    model = build("lenet-5")
    prune_(model, {"linear": 0.92, "conv": 0.6})
    quantize_(model, {"linear": 5, "conv": 8})
    return model


def test_round_trip_is_bit_identical_and_predicts_the_same(compressed_lenet5, tmp_path):
    path = tmp_path / "lenet5.mzip"
    written = modelzip.save(compressed_lenet5, path, meta={"note": "test"})
    assert written == path.stat().st_size
    loaded = modelzip.load(path)
    plain = strip(build("lenet-5"))
    plain.load_state_dict(modelzip.layers.plain_state_dict(compressed_lenet5))
    assert same_weights(plain, loaded)
    x = torch.rand(16, 1, 28, 28)
    assert torch.equal(plain(x), loaded(x))
    assert not loaded.training and not any(t.is_meta for t in loaded.state_dict().values())
    # the file is far smaller than the dense weights, and the header keeps what we gave it
    assert dense_bytes(compressed_lenet5) / written > 25
    assert modelzip.header(path)["meta"]["note"] == "test"
    assert modelzip.header(path)["tensors"]["fc1.weight"]["encoding"] == "sparse"


def test_saving_leaves_the_model_parametrized_and_working(compressed_lenet5):
    modelzip.dumps(compressed_lenet5)
    assert hasattr(compressed_lenet5.fc1, "parametrizations")
    compressed_lenet5(torch.zeros(1, 1, 28, 28))


def test_buffers_and_integer_tensors_survive():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    model[1].running_mean.uniform_()
    model[1].num_batches_tracked += 7
    loaded = modelzip.loads(modelzip.dumps(model), nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    assert same_weights(model, loaded) and loaded[1].num_batches_tracked.item() == 7


def test_user_model_needs_a_skeleton_or_permission():
    model = build("torch.nn:Identity")
    blob = modelzip.dumps(model)
    with pytest.raises(ModelError, match="allow_import"):
        modelzip.loads(blob)
    assert isinstance(modelzip.loads(blob, allow_import=True), nn.Identity)
    with pytest.raises(ModelError, match="records no architecture"):
        modelzip.loads(modelzip.dumps(nn.Linear(2, 2)))
    assert isinstance(modelzip.loads(modelzip.dumps(nn.Linear(2, 2)), nn.Linear(2, 2)), nn.Linear)


def test_wrong_skeleton_is_a_clear_error():
    with pytest.raises(ModelError, match="do not fit"):
        modelzip.loads(modelzip.dumps(build("lenet-300-100")), build("lenet-5"))


def test_nan_weights_are_refused_and_the_old_file_kept(tmp_path):
    path = tmp_path / "m.mzip"
    model = build("lenet-300-100")
    modelzip.save(model, path)
    before = path.read_bytes()
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="fc2.weight.*NaN"):
        modelzip.save(model, path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_bad_files_give_modelzip_errors(tmp_path, compressed_lenet5):
    blob = modelzip.dumps(compressed_lenet5)
    path = tmp_path / "cut.mzip"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TruncatedError):
        modelzip.load(path)
    with pytest.raises(FormatError, match="no such file"):
        modelzip.load(tmp_path / "missing.mzip")
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04 a zip, not an mzip")
    with pytest.raises(FormatError, match="not a .mzip"):
        modelzip.load(tmp_path / "x.pt")
