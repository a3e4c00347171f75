"""Run by test_hf: a tiny transformers model (built from a config, no download) trained with
Trainer through cs.hf.train, killing itself with SIGKILL at a given step.

    python hf_worker.py LOCATION OUTPUT_DIR RESULT [KILL_AT_STEP]
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
import transformers

import colabsession as cs

location, output_dir, result = sys.argv[1:4]
kill_at = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "-" else None
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
transformers.set_seed(0)


class Tokens(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 40, (48, 12), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


config = transformers.GPT2Config(
    vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.2
)
model = transformers.GPT2LMHeadModel(config)


class Kill(transformers.TrainerCallback):
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


args = transformers.TrainingArguments(
    output_dir=output_dir,
    max_steps=24,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    lr_scheduler_type="linear",
    save_strategy="steps",
    save_steps=5,
    logging_steps=1,
    seed=0,
    data_seed=0,
    report_to=[],
    use_cpu=True,
    dataloader_num_workers=0,
    disable_tqdm=True,
)
trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[Kill()])
cs.hf.train(trainer, location, every=None)
torch.save({k: v.clone() for k, v in model.state_dict().items()}, result)
print("done", trainer.state.global_step, flush=True)
