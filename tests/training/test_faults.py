import pytest
import torch

from training.faults import FaultPlan, StepSkipper, corrupt_labels, loss_targets, noisy_inputs, parse_faults


def test_specs_parse_into_a_plan_that_remembers_them():
    plan = parse_faults(["label_noise:0.2", "shuffle_labels", "input_noise:0.1", "wrong_loss", "skip_grad:0.5"])
    assert (plan.label_noise, plan.shuffle_labels, plan.input_noise, plan.wrong_loss, plan.skip_grad) == (
        0.2, True, 0.1, True, 0.5)
    assert plan.active and plan.specs[0] == "label_noise:0.2"
    assert not parse_faults([]).active


@pytest.mark.parametrize(("spec", "message"), [
    ("label_nosie:0.2", "unknown fault 'label_nosie'"),
    ("label_noise", "needs a value"),
    ("skip_grad:1.5", r"fraction in \[0, 1\]"),
    ("shuffle_labels:1", "takes no value"),
])
def test_bad_specs_are_refused_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_faults([spec])


def test_label_noise_flips_exactly_the_requested_share_and_is_seeded():
    labels = [0, 1] * 50
    noisy, effects = corrupt_labels(labels, parse_faults(["label_noise:0.2"]), seed=3)
    assert effects == {"labels_flipped": 20}
    assert sum(a != b for a, b in zip(labels, noisy, strict=True)) == 20
    assert corrupt_labels(labels, parse_faults(["label_noise:0.2"]), seed=3)[0] == noisy
    assert corrupt_labels(labels, parse_faults(["label_noise:0.2"]), seed=4)[0] != noisy


def test_shuffled_labels_keep_the_class_counts_but_not_the_pairing():
    labels = [0] * 30 + [1] * 30
    shuffled, effects = corrupt_labels(labels, parse_faults(["shuffle_labels"]), seed=0)
    assert sorted(shuffled) == labels
    assert effects["labels_changed_by_shuffle"] > 15  # ~half of the pairs change under a random permutation


def test_clean_plan_changes_nothing():
    labels = [0, 1, 1, 0]
    assert corrupt_labels(labels, FaultPlan(), seed=0) == (labels, {})
    inputs = torch.randn(2, 4, 8, 8)
    assert noisy_inputs(inputs, FaultPlan()) is inputs
    targets = torch.tensor([0, 1])
    assert torch.equal(loss_targets(targets, FaultPlan()), targets)


def test_input_noise_has_the_requested_strength():
    torch.manual_seed(0)
    inputs = torch.zeros(8, 4, 32, 32)
    noise = noisy_inputs(inputs, parse_faults(["input_noise:0.3"])) - inputs
    assert noise.std().item() == pytest.approx(0.3, rel=0.05)


def test_wrong_loss_targets_the_opposite_class():
    assert loss_targets(torch.tensor([0, 1, 1]), parse_faults(["wrong_loss"])).tolist() == [1, 0, 0]


def test_step_skipper_drops_the_requested_share_reproducibly():
    def decisions(seed: int) -> list[bool]:
        skipper = StepSkipper(parse_faults(["skip_grad:0.5"]), seed)
        result = [skipper.skip() for _ in range(400)]
        assert skipper.skipped + skipper.taken == 400 and skipper.skipped == sum(result)
        return result

    first = decisions(1)
    assert 150 < sum(first) < 250
    assert decisions(1) == first
    assert not any(StepSkipper(FaultPlan(), 0).skip() for _ in range(50))
    assert all(StepSkipper(parse_faults(["skip_grad:1"]), 0).skip() for _ in range(50))
    assert decisions(2) != first
