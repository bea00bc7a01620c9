import pytest
import torch

from modelzip.errors import ConfigError, ModelError
from modelzip.models import build
from modelzip.train import TrainConfig, cross_entropy, evaluate, fit, jittered


def test_fit_learns_and_is_deterministic(digits):
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build("lenet-300-100", digits.input_shape, digits.num_classes)
        logs = fit(model, digits.train, TrainConfig(epochs=8, seed=1), test=digits.test)
        runs.append((logs[-1].loss, evaluate(model, digits.test)))
    assert runs[0] == runs[1]
    assert runs[0][1] > 0.9 and logs[-1].test_accuracy == pytest.approx(runs[0][1])


def test_interrupted_run_resumes_to_the_same_weights(digits, tmp_path):
    config, ckpt = TrainConfig(epochs=3), tmp_path / "run.pt"
    torch.manual_seed(0)
    straight = build("lenet-300-100", digits.input_shape, digits.num_classes)
    fit(straight, digits.train, config)

    calls = []

    def crash_in_epoch_3(model, batch):
        calls.append(1)
        if len(calls) > 2 * -(-len(digits.train) // config.batch_size):
            raise KeyboardInterrupt
        return cross_entropy(model, batch)

    torch.manual_seed(0)
    resumed = build("lenet-300-100", digits.input_shape, digits.num_classes)
    with pytest.raises(KeyboardInterrupt):
        fit(resumed, digits.train, config, checkpoint=ckpt, loss_fn=crash_in_epoch_3)
    torch.manual_seed(0)
    fresh = build("lenet-300-100", digits.input_shape, digits.num_classes)  # a new process, same model
    logs = fit(fresh, digits.train, config, checkpoint=ckpt)
    assert [log.epoch for log in logs] == [1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), fresh.state_dict().values()))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_checkpoint_of_another_model_is_refused(digits, tmp_path):
    fit(build("lenet-300-100", digits.input_shape, 10), digits.train, TrainConfig(epochs=1),
        checkpoint=tmp_path / "a.pt")
    with pytest.raises(ModelError, match="does not fit this run"):
        fit(build("mlp-800-800", digits.input_shape, 10), digits.train, TrainConfig(epochs=2),
            checkpoint=tmp_path / "a.pt")


def test_divergence_is_reported(digits):
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    with torch.no_grad():
        model.fc1.weight.fill_(float("nan"))
    with pytest.raises(ModelError, match="diverged"):
        fit(model, digits.train, TrainConfig(epochs=1))


def test_min_steps_adds_epochs_on_small_data(digits):
    model = build("lenet-300-100", digits.input_shape, digits.num_classes)
    per_epoch = -(-len(digits.train) // 128)  # 12 batches of the 1,437 training digits
    logs = fit(model, digits.train, TrainConfig(epochs=1, min_steps=5 * per_epoch - 3))
    assert [log.epoch for log in logs] == [1, 2, 3, 4, 5]


def test_jittered_loss_sees_shifted_inputs_with_the_same_labels():
    seen = []

    def spy(model, batch):
        seen.append(batch)
        return model(batch[0]).sum() * 0

    images, labels = torch.rand(8, 1, 5, 5), torch.arange(8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(25, 2))
    jittered(2, spy)(model, [images, labels])
    assert torch.equal(seen[0][1], labels) and seen[0][0].shape == images.shape
    assert not torch.equal(seen[0][0], images)


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_a_learning_rate_must_be_a_positive_number(lr):
    with pytest.raises(ConfigError, match="lr > 0"):
        TrainConfig(lr=lr)
