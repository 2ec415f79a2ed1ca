"""The distillation loss: a divergence between the teacher's and the student's next-token distributions
on the positions that are trained (the assistant tokens).

``beta`` chooses the divergence, as in GKD (Agarwal et al., 2024) and TRL's ``generalized_jsd_loss``:

- ``beta = 0``: forward KL, KL(teacher || student) (mean-seeking: classic logit distillation);
- ``beta = 1``: reverse KL, KL(student || teacher) (mode-seeking);
- otherwise the generalised Jensen-Shannon divergence with the mixture M = beta * teacher + (1 - beta) * student:
  beta * KL(teacher || M) + (1 - beta) * KL(student || M).

Both distributions are softened by ``temperature`` and the divergence is multiplied by temperature²
(Hinton et al., 2015) so its gradients keep their scale as the temperature changes.

:func:`corrected_loss` distils only where the teacher's most likely token is the verified answer's
token, and trains on the verified token where it is not: the snapshot holds answers that passed the
verifier, while the teacher's distribution at a position it gets wrong carries its own habits. Chat markup
is the typical case: a record rendered by the chat template opens each call with an added token (Qwen's
``<tool_call>``) that a teacher which spells the tag in pieces gives almost no probability; distilled there,
a student learns never to open a call.
"""

import math
from typing import Any


def distillation_loss(student_logits: Any, teacher_logits: Any, mask: Any = None, *, beta: float = 0.0,
                      temperature: float = 1.0, reduction: str = "mean") -> Any:
    """The divergence per position (``reduction="none"``), summed (``"sum"``) or averaged over the
    positions where ``mask`` is true (``"mean"``). Logits are ``(..., vocab)``; ``mask`` is ``(...)``."""
    import torch
    import torch.nn.functional as F

    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be above 0, got {temperature}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}")
    if mask is not None and reduction != "none":  # only the trained positions: saves memory on big vocabularies
        mask = mask.bool()
        student_logits, teacher_logits = student_logits[mask], teacher_logits[mask]
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if beta == 0.0:
        divergence = _kl(teacher, student)
    elif beta == 1.0:
        divergence = _kl(student, teacher)
    else:
        mixture = torch.logsumexp(torch.stack([teacher + math.log(beta), student + math.log(1.0 - beta)]), dim=0)
        divergence = beta * _kl(teacher, mixture) + (1.0 - beta) * _kl(student, mixture)
    divergence = divergence * temperature**2
    if reduction == "none":
        return divergence if mask is None else divergence * mask.to(divergence.dtype)
    if reduction == "sum":
        return divergence.sum()
    return divergence.sum() / max(divergence.numel(), 1)


def corrected_loss(student_logits: Any, teacher_logits: Any, targets: Any, *, beta: float = 0.0,
                   temperature: float = 1.0) -> tuple[Any, Any]:
    """The mean over positions of the distillation loss where ``teacher_logits`` rank ``targets`` (the
    verified tokens) first, and of the cross-entropy on ``targets`` elsewhere; and the boolean mask of
    positions where the teacher agreed. Logits are ``(N, vocab)``, ``targets`` ``(N,)``."""
    import torch
    import torch.nn.functional as F

    divergence = distillation_loss(student_logits, teacher_logits, beta=beta, temperature=temperature,
                                   reduction="none")
    cross_entropy = F.cross_entropy(student_logits.float(), targets, reduction="none")
    agree = teacher_logits.argmax(dim=-1) == targets
    per_position = torch.where(agree, divergence, cross_entropy)
    return per_position.sum() / max(per_position.numel(), 1), agree


def _kl(p_log: Any, q_log: Any) -> Any:
    """KL(p || q) over the last dimension, from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(dim=-1)
