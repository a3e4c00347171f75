"""The transformers text-classification fine-tuning tutorial (docs "Text classification": a
model, a tokenized dataset, ``compute_metrics`` for accuracy, ``TrainingArguments`` that evaluate
and save each epoch and load the best model at the end, ``Trainer``), written here the way it is
written, with a tiny DistilBERT built from a config and a tiny synthetic tokenized dataset (no
download), and adapted to colabsession exactly as docs/huggingface.md says: the lines marked
``# cs`` are the ones a user changes. The tutorial's values are shrunk for a tiny model.

    python hf_finetune.py
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

import colabsession as cs  # cs


class Tokenized(torch.utils.data.Dataset[dict[str, Any]]):
    """Reviews already tokenized (``input_ids``, ``attention_mask``) with a 0/1 ``label``: the
    label follows the tokens, flipped for a quarter of the training set, so the model learns,
    then overfits."""

    def __init__(self, size: int, seed: int, noise: float) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(4, 64, (size, 16), generator=generator)
        self.attention_mask = torch.ones_like(self.input_ids)
        labels = (self.input_ids[:, :4] >= 34).sum(dim=1) >= 2
        flip = torch.rand(size, generator=generator) < noise
        self.labels = (labels ^ flip).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "label": self.labels[index],
        }


train_dataset, eval_dataset = Tokenized(120, 1, noise=0.25), Tokenized(64, 2, noise=0.0)

id2label = {0: "NEGATIVE", 1: "POSITIVE"}
label2id = {"NEGATIVE": 0, "POSITIVE": 1}
config = DistilBertConfig(  # type: ignore[call-arg]
    vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=16,
    num_labels=2, id2label=id2label, label2id=label2id,
)  # fmt: skip
model = DistilBertForSequenceClassification(config)


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    predictions, labels = eval_pred
    predictions = np.argmax(predictions, axis=1)
    return {"accuracy": float((predictions == labels).mean())}


training_args = TrainingArguments(
    output_dir="my_awesome_model",
    learning_rate=1e-2,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=16,
    num_train_epochs=5,
    weight_decay=0.01,
    eval_strategy="epoch",
    save_strategy="epoch",
    load_best_model_at_end=True,
    metric_for_best_model="accuracy",
    save_total_limit=2,
    logging_steps=2,
    report_to="none",  # (the tutorial pushes to the Hub)
    use_cpu=True,
    disable_tqdm=True,
)

trainer = Trainer(
    model=model,
    args=training_args,
    train_dataset=train_dataset,
    eval_dataset=eval_dataset,
    compute_metrics=compute_metrics,
)

cs.hf.train(trainer, run="my_awesome_model", every=None)  # cs: was trainer.train()

# (the tests' own: what they compare with a run never interrupted)
torch.save({k: v.clone() for k, v in model.state_dict().items()}, "final.pt")
print("best", trainer.state.best_global_step, trainer.state.global_step, flush=True)
