import pytest
import torch
from torch import nn

from training.config import TrainConfig
from training.optim import build_optimizer, build_scheduler, resolve_mixed_precision


def _rates(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    rates = []
    for _ in range(config.epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_then_cosine_decay():
    config = TrainConfig(dataset="d", output_dir="o", epochs=10, learning_rate=1e-3, warmup_epochs=2)
    rates = _rates(config, steps_per_epoch=10)
    assert rates[0] == pytest.approx(1e-5)  # starts at 1 % of the peak
    assert rates[:20] == sorted(rates[:20])  # rises through warm-up
    assert max(rates) == pytest.approx(1e-3, rel=1e-6) and rates.index(max(rates)) == 20
    assert rates[20:] == sorted(rates[20:], reverse=True)  # then only falls
    assert rates[-1] < 2e-5


def test_no_warmup_starts_at_the_peak():
    rates = _rates(TrainConfig(dataset="d", output_dir="o", epochs=3, learning_rate=1e-3, warmup_epochs=0), 5)
    assert rates[0] == pytest.approx(1e-3)


def test_optimizer_is_adamw_with_the_configured_decay():
    optimizer = build_optimizer(nn.Linear(2, 2), TrainConfig(dataset="d", output_dir="o", weight_decay=0.05))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.05


def test_mixed_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_mixed_precision("auto", cpu).dtype is None
    assert resolve_mixed_precision("off", cpu).name == "off"
    assert resolve_mixed_precision("bf16", cpu).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_mixed_precision("fp16", cpu)
    assert not resolve_mixed_precision("bf16", cpu).grad_scaler(cpu).is_enabled()
