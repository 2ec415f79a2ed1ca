"""The labelled-positions loss against the model's own causal LM loss: the same value and the same gradients,
with and without LoRA, padded batches and the step's token count."""

import pytest
import torch
from supertiny.train.labelled_loss import IGNORE_INDEX, labelled_positions_loss, trained_logits


def _model(tiny_model_dir, lora: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                                 init_lora_weights=False))
    return model


def _inputs(vocab: int) -> dict[str, torch.Tensor]:
    """Two rows: a prompt then a short answer, the second row shorter (right-padded, as the collator pads)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (2, 12), generator=generator)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, 7:12] = input_ids[0, 7:12]
    labels[1, 4:8] = input_ids[1, 4:8]
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _gradients(model) -> dict[str, torch.Tensor]:
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("num_items", [None, 20])
def test_the_loss_and_gradients_equal_the_models_own(tiny_model_dir, lora, num_items):
    model = _model(tiny_model_dir, lora)
    inputs = _inputs(model.config.vocab_size)
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}

    own = model(**inputs, **kwargs).loss
    own.backward()
    own_grads = _gradients(model)
    loss, logits = labelled_positions_loss(model, inputs, kwargs.get("num_items_in_batch"))
    loss.backward()
    grads = _gradients(model)

    assert logits.shape == (9, model.config.vocab_size)  # one row per labelled token
    assert loss.item() == pytest.approx(own.item(), rel=1e-5)
    assert grads.keys() == own_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, own_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_batch_without_labels_gives_a_zero_loss_not_nan(tiny_model_dir):
    model = _model(tiny_model_dir, lora=True)
    inputs = _inputs(model.config.vocab_size)
    inputs["labels"] = torch.full_like(inputs["labels"], IGNORE_INDEX)

    loss, _ = labelled_positions_loss(model, inputs)

    assert loss.item() == 0.0


def test_the_logits_at_the_trained_positions_are_the_full_forward_passes(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, 4:] = input_ids[0, 4:]
    labels[1, 2:4] = input_ids[1, 2:4]
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask).logits
        kept = trained_logits(model, input_ids, attention_mask, labels)
    expected = torch.cat([full[0, 3:5], full[1, 1:3]])
    torch.testing.assert_close(kept, expected)


@pytest.mark.parametrize("lora", [False, True])
def test_the_compact_fused_head_gives_trls_outputs_and_gradients(tiny_model_dir, lora, monkeypatch):
    from types import SimpleNamespace

    from supertiny.train.labelled_loss import compact_fused_heads
    from trl.trainer.utils import add_fused_lm_head

    monkeypatch.setattr("supertiny.train.labelled_loss.SCORED_ROWS", 4)  # 9 labelled positions: three slices
    model = _model(tiny_model_dir, lora)
    add_fused_lm_head(model.get_base_model() if lora else model, temperature=0.7,
                      outputs=("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"))
    inputs = _inputs(model.config.vocab_size)

    def run():
        outputs = model(**inputs, fused_lm_head=True, num_items_in_batch=torch.tensor(12))
        (outputs.loss + 0.1 * outputs.entropy.sum()).backward()
        return outputs, _gradients(model)

    reference, reference_grads = run()
    compact_fused_heads(SimpleNamespace(model=model, ref_model=None), temperature=0.7)
    patched = model.get_base_model() if lora else model
    assert patched.forward.__func__.__code__.co_filename.endswith("labelled_loss.py")  # it answers from now on
    compact, grads = run()

    for name in ("loss", "log_probs", "entropy", "log_sum_sq_probs", "mean_logits"):
        torch.testing.assert_close(getattr(compact, name), getattr(reference, name), rtol=1e-4, atol=1e-5, msg=name)
    assert torch.equal(compact.is_top1, reference.is_top1) and torch.equal(compact.label_mask, reference.label_mask)
    assert grads.keys() == reference_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    plain = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])  # generation's path
    assert plain.logits.shape[:2] == inputs["input_ids"].shape


def test_the_compact_fused_head_without_labelled_positions_gives_a_differentiable_zero(tiny_model_dir):
    from types import SimpleNamespace

    from supertiny.train.labelled_loss import compact_fused_heads
    from trl.trainer.utils import add_fused_lm_head

    model = _model(tiny_model_dir, lora=True)
    add_fused_lm_head(model.get_base_model())
    compact_fused_heads(SimpleNamespace(model=model), temperature=1.0)
    inputs = _inputs(model.config.vocab_size)
    inputs["labels"] = torch.full_like(inputs["labels"], IGNORE_INDEX)

    outputs = model(**inputs, fused_lm_head=True)
    outputs.loss.backward()

    assert outputs.loss.item() == 0.0 and not outputs.log_probs.any()
