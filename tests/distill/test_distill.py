import numpy as np
import pytest
import torch
from torch import nn

import modelzip
from modelzip.data import jitter
from modelzip.distill import DistillConfig, cache_soft_logits, distill, ensemble_logits, soft_logits, unlabeled
from modelzip.errors import ConfigError
from modelzip.train import TrainConfig, evaluate, fit, predict

FAST = TrainConfig(epochs=3, batch_size=64)


@pytest.fixture(scope="module")
def teachers(digits):
    found = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = modelzip.build("mlp-64", digits.input_shape, digits.num_classes, dropout=0.2)
        fit(model, digits.train, TrainConfig(epochs=1, min_steps=400, lr=3e-3, seed=seed))
        found.append(model.eval())
    return found


def _student(digits, seed=0):
    torch.manual_seed(seed)
    return modelzip.build("mlp-16", digits.input_shape, digits.num_classes)


def test_cached_on_disk_and_online_targets_train_the_same_student(digits, teachers, tmp_path):
    config = DistillConfig(temperature=4, alpha=0.7, train=FAST)
    students = []
    for cache in (True, tmp_path / "targets.npy", False):
        student = _student(digits)
        distill(student, teachers, digits.train, config, cache=cache)
        students.append(student)
    for other in students[1:]:
        for a, b in zip(students[0].parameters(), other.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["targets.npy"]  # no temporary file left behind


def test_disk_cache_equals_memory_and_teachers_stay_in_their_mode(digits, teachers, tmp_path):
    teachers[0].train()
    memory = cache_soft_logits(teachers, digits.train, 3.0)
    disk = cache_soft_logits(teachers, digits.train, 3.0, path=tmp_path / "t.npy")
    assert teachers[0].training and not teachers[1].training
    teachers[0].eval()
    torch.testing.assert_close(memory, disk)
    stacked = torch.stack([predict(t, digits.train) for t in teachers])
    torch.testing.assert_close(memory, ensemble_logits(stacked, 3.0), rtol=1e-4, atol=1e-4)
    assert np.load(tmp_path / "t.npy").shape == (len(digits.train), digits.num_classes)


def test_precomputed_logits_equal_passing_the_teachers(digits, teachers):
    config = DistillConfig(temperature=2, alpha=0.5, train=FAST)
    a, b = _student(digits), _student(digits)
    distill(a, teachers, digits.train, config)
    distill(b, torch.stack([predict(t, digits.train) for t in teachers]), digits.train, config)
    torch.testing.assert_close(a[1].weight, b[1].weight, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="N = "):
        distill(_student(digits), torch.zeros(3, 10), digits.train, config)


def test_distillation_without_labels_teaches_the_student(digits, teachers):
    student = _student(digits)
    before = evaluate(student, digits.test)
    config = DistillConfig(temperature=4, train=TrainConfig(epochs=1, min_steps=600, lr=3e-3))
    distill(student, teachers[0], unlabeled(digits.train), config)
    assert before < 0.3 and evaluate(student, digits.test) > 0.85


def test_jittered_distillation_runs_the_teacher_on_each_shifted_batch(digits, teachers):
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return teachers[0](x)

    student = _student(digits)
    logs = distill(student, Spy(), digits.train, DistillConfig(jitter=1, train=TrainConfig(epochs=1, batch_size=500)))
    assert len(seen) == 3 and len(logs) == 1  # one teacher pass per batch, online
    assert not any(torch.equal(x, digits.train.tensors[0][:len(x)]) for x in seen)
    with pytest.raises(ConfigError, match="jittered"):
        distill(student, torch.zeros(len(digits.train), 10), digits.train, DistillConfig(jitter=1))


def test_soft_logits_of_a_single_teacher_have_its_softmax(digits, teachers):
    x = digits.test.tensors[0][:5]
    torch.testing.assert_close((soft_logits(teachers[0], x, 5.0) / 5).softmax(-1), (teachers[0](x) / 5).softmax(-1))


def test_jitter_shifts_each_image_by_at_most_max_shift():
    images = torch.rand(64, 2, 6, 7)
    shifted = jitter(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    padded = nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(64):  # every output is one of the 25 shifted windows of its own input
        assert any(torch.equal(shifted[i], padded[i, :, dy:dy + 6, dx:dx + 7]) for dy in range(5) for dx in range(5))
    assert not torch.equal(shifted, images)
    assert jitter(images, 0) is images
    with pytest.raises(ConfigError):
        jitter(images[0], 1)


def test_bad_config_is_an_error():
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(temperature=0)
    with pytest.raises(ConfigError, match="teachers must be"):
        distill(nn.Linear(2, 2), [], torch.utils.data.TensorDataset(torch.zeros(2, 2), torch.zeros(2).long()))
