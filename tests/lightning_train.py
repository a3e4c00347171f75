"""A small Lightning run, as a user would write it, for the kill-and-resume tests
(test_lightning.py): ``python lightning_train.py OUT LOADER EPOCHS [REFERENCE]``; OUT gets the
final parameters, LOADER is ``stateful`` (torchdata's StatefulDataLoader), ``resumable``
(colabsession's ResumableLoader) or ``plain`` (a DataLoader). With REFERENCE the same process
then trains a fresh run uninterrupted and writes its parameters there (one Lightning import
for both: it takes seconds)."""

from __future__ import annotations

import sys

import lightning as L
import torch
from torch import nn

import colabsession as cs


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def main(out: str, kind: str, epochs: int, run: str) -> None:
    L.seed_everything(0, verbose=False)
    data = torch.utils.data.TensorDataset(torch.randn(80, 4), torch.randn(80, 1))
    if kind == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader  # type: ignore[import-untyped]

        loader = StatefulDataLoader(data, batch_size=8, shuffle=True)
    elif kind == "resumable":
        loader = cs.torch.ResumableLoader(data, batch_size=8, shuffle=True, seed=0)
    else:
        loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    session = cs.lightning.SessionCheckpoint(run, every=None, every_steps=3)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[session],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(Model(), loader, ckpt_path=session.ckpt_path())
    torch.save(
        {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}, out
    )


main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "lit")
if len(sys.argv) > 4:
    main(sys.argv[4], sys.argv[2], int(sys.argv[3]), "lit-reference")
