import pytest
import torch

from handler.settings import HandlerSettings
from handler.torchscript import OPTIMIZATIONS, ServingOptions, load_torchscript


@pytest.fixture(scope="module")
def exported(tiny_export):
    return load_torchscript(tiny_export / "model.torchscript.pt", torch.device("cpu"))


@pytest.fixture
def fresh(tiny_export):
    """Loads the export anew: prepare() converts a module in place, the `exported` reference must stay as it is."""
    return lambda: load_torchscript(tiny_export / "model.torchscript.pt", torch.device("cpu"))


def inputs(count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(4, 128, 128, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("optimization", OPTIMIZATIONS)
def test_every_preparation_scores_like_the_exported_model(exported, fresh, optimization):
    options = ServingOptions(optimization=optimization)
    prepared = options.prepare(fresh())
    batch = options.batch(inputs(), torch.device("cpu"))
    with torch.inference_mode():
        expected = exported(torch.stack(inputs()))
        assert torch.allclose(prepared(batch), expected, atol=1e-4)


def test_frozen_models_hold_no_parameters_and_fold_batchnorm(exported, fresh):
    frozen = ServingOptions().prepare(fresh())
    assert list(frozen.parameters()) == []  # weights became constants
    assert "batch_norm" not in str(frozen.graph)  # folded into the convolutions
    assert "batch_norm" in str(exported.inlined_graph)


def test_batches_come_in_the_models_layout_and_dtype():
    tensors = inputs(2)
    channels_last = ServingOptions().batch(tensors, torch.device("cpu"))
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and not channels_last.is_contiguous()
    assert torch.equal(channels_last, torch.stack(tensors))
    plain = ServingOptions(optimization="frozen").batch(tensors, torch.device("cpu"))
    assert plain.is_contiguous() and torch.equal(plain, torch.stack(tensors))
    half = ServingOptions(precision="bf16").batch(tensors, torch.device("cpu"))
    assert half.dtype == torch.bfloat16 and torch.equal(half, torch.stack(tensors).to(torch.bfloat16))


def test_bf16_scores_close_to_fp32(exported, fresh):
    options = ServingOptions(precision="bf16")
    prepared = options.prepare(fresh())
    with torch.inference_mode():
        logits = prepared(options.batch(inputs(), torch.device("cpu"))).float()
        expected = exported(torch.stack(inputs()))
    assert torch.allclose(torch.softmax(logits, 1), torch.softmax(expected, 1), atol=0.05)


@pytest.mark.parametrize(("field", "value"), [("optimization", "fast"), ("precision", "int8")])
def test_unknown_choices_are_refused_with_the_allowed_ones(field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        ServingOptions(**{field: value})
    with pytest.raises(ValueError, match=f"handler setting '{field}' must be one of"):
        HandlerSettings.from_model_config({"handler": {field: value}})


def test_handler_settings_carry_the_serving_options():
    settings = HandlerSettings.from_model_config({"handler": {"optimization": "none", "precision": "fp16"}})
    assert settings.serving_options() == ServingOptions("none", "fp16")
    assert HandlerSettings().serving_options() == ServingOptions("frozen_channels_last", "fp32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CI has none)")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_half_precision_scores_close_to_fp32(exported, fresh, precision):
    device = torch.device("cuda")
    options = ServingOptions(precision=precision)
    prepared = options.prepare(fresh().to(device))
    with torch.inference_mode():
        logits = prepared(options.batch(inputs(), device)).float().cpu()
        expected = exported(torch.stack(inputs()))
    assert torch.allclose(torch.softmax(logits, 1), torch.softmax(expected, 1), atol=0.05)
