"""The distillation loss against hand-computed divergences."""

import math

import pytest
import torch
from supertiny.train.kd_loss import corrected_loss, distillation_loss

STUDENT = [[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]]
TEACHER = [[1.0, 1.0, 0.0], [3.0, -1.0, 0.5]]


def _softmax(logits, temperature=1.0):
    exps = [math.exp(value / temperature) for value in logits]
    return [value / sum(exps) for value in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _loss(beta, temperature=1.0, rows=(0, 1)):
    values = []
    for row in rows:
        s, t = _softmax(STUDENT[row], temperature), _softmax(TEACHER[row], temperature)
        if beta == 0:
            value = _kl(t, s)
        elif beta == 1:
            value = _kl(s, t)
        else:
            m = [beta * ti + (1 - beta) * si for si, ti in zip(s, t, strict=True)]
            value = beta * _kl(t, m) + (1 - beta) * _kl(s, m)
        values.append(value * temperature**2)
    return sum(values) / len(values)


def _tensors():
    return torch.tensor([STUDENT]), torch.tensor([TEACHER])  # (batch 1, positions 2, vocab 3)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_equals_the_hand_computed_divergence(beta, temperature):
    student, teacher = _tensors()
    loss = distillation_loss(student, teacher, beta=beta, temperature=temperature)
    assert loss.item() == pytest.approx(_loss(beta, temperature), rel=1e-5)


def test_kl_is_asymmetric_jsd_is_symmetric_at_one_half_and_both_vanish_on_equal_distributions():
    student, teacher = _tensors()
    forward, reverse = distillation_loss(student, teacher, beta=0.0), distillation_loss(student, teacher, beta=1.0)
    assert forward.item() == pytest.approx(distillation_loss(teacher, student, beta=1.0).item(), rel=1e-5)
    assert forward.item() != pytest.approx(reverse.item(), rel=1e-3)
    assert distillation_loss(student, teacher, beta=0.5).item() == pytest.approx(
        distillation_loss(teacher, student, beta=0.5).item(), rel=1e-5)
    assert distillation_loss(teacher, teacher, beta=0.5).item() == pytest.approx(0.0, abs=1e-7)


def test_mask_keeps_only_the_trained_positions():
    student, teacher = _tensors()
    mask = torch.tensor([[False, True]])
    assert distillation_loss(student, teacher, mask, beta=0.3).item() == pytest.approx(_loss(0.3, rows=(1,)), rel=1e-5)
    per_position = distillation_loss(student, teacher, mask, reduction="none")
    assert per_position.shape == (1, 2) and per_position[0, 0].item() == 0.0
    assert distillation_loss(student, teacher, mask, reduction="sum").item() == pytest.approx(_loss(0.0, rows=(1,)),
                                                                                               rel=1e-5)


def test_gradient_flows_to_the_student_only():
    student, teacher = _tensors()
    student.requires_grad_(True)
    distillation_loss(student, teacher, beta=0.5, temperature=2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_bad_arguments_are_refused():
    student, teacher = _tensors()
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(student, teacher[..., :2])
    with pytest.raises(ValueError, match="beta"):
        distillation_loss(student, teacher, beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, temperature=0.0)


def test_corrected_loss_distils_where_the_teacher_ranks_the_verified_token_first_and_learns_the_token_elsewhere():
    student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.5], [3.0, -1.0, 0.5]])
    targets = torch.tensor([1, 2])  # the teacher ranks token 1 first in row 0, but token 0 (not 2) in row 1
    loss, agree = corrected_loss(student, teacher, targets, beta=0.0)
    distilled = _kl(_softmax([0.0, 2.0, 0.5]), _softmax([2.0, 0.5, -1.0]))
    learnt = -math.log(_softmax([0.0, 0.0, 0.0])[2])
    assert agree.tolist() == [True, False]
    assert loss.item() == pytest.approx((distilled + learnt) / 2, rel=1e-5)
    # where the teacher agrees everywhere it is the plain distillation loss
    loss, agree = corrected_loss(student, teacher, torch.tensor([1, 0]), beta=0.3, temperature=2.0)
    assert bool(agree.all()) and loss.item() == pytest.approx(
        distillation_loss(student, teacher, beta=0.3, temperature=2.0).item(), rel=1e-5)
