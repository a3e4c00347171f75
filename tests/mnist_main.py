"""pytorch/examples' ``mnist/main.py``, written here the way that script is written (its Net with
Dropout, train() and test(), argparse options, defaults and progress lines), on scikit-learn's
bundled digits (8x8, no download) instead of MNIST, and adapted to colabsession exactly as
docs/pytorch.md says: the lines marked ``# cs`` are the ones a user changes.

    python mnist_main.py --batch-size 72 --epochs 3 --save-model
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR

import colabsession as cs  # cs
from colabsession.torch import ResumableLoader, TrainingState  # cs


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def train(
    args: argparse.Namespace,
    model: nn.Module,
    device: torch.device | None,
    train_loader: ResumableLoader,
    optimizer: optim.Optimizer,
    epoch: int,
    state: TrainingState,  # cs
    ckpt: cs.Checkpointer,  # cs
) -> None:
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader, train_loader.position):  # cs
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        state.step += 1  # cs
        ckpt.maybe_save(state.step, state.state_dict, metrics={"loss": loss.item()})  # cs
        if batch_idx % args.log_interval == 0:
            print(
                "Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(  # noqa: UP032
                    epoch,
                    batch_idx * len(data),
                    len(train_loader.dataset),
                    100.0 * batch_idx / len(train_loader),
                    loss.item(),
                )
            )
            if args.dry_run:
                break


def test(
    model: nn.Module,
    device: torch.device | None,
    test_loader: torch.utils.data.DataLoader,  # type: ignore[type-arg]
) -> None:
    model.eval()
    test_loss = 0.0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()

    test_loss /= len(test_loader.dataset)  # type: ignore[arg-type]

    print(
        "\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(  # noqa: UP032
            test_loss,
            correct,
            len(test_loader.dataset),  # type: ignore[arg-type]
            100.0 * correct / len(test_loader.dataset),  # type: ignore[arg-type]
        )
    )


def digits(train: bool) -> torch.utils.data.TensorDataset:
    """MNIST's stand-in: scikit-learn's bundled digits, read from its file (importing
    scikit-learn takes seconds), normalised as the script normalises MNIST."""
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None
    assert spec.origin is not None
    table = np.loadtxt(Path(spec.origin).parent / "datasets/data/digits.csv.gz", delimiter=",")
    x, y = table[:, :-1], table[:, -1]
    images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    images = (images - 0.3) / 0.4
    labels = torch.tensor(y, dtype=torch.int64)
    part = slice(0, 1500) if train else slice(1500, None)
    return torch.utils.data.TensorDataset(images[part], labels[part])


def main() -> None:
    # Training settings
    parser = argparse.ArgumentParser(description="PyTorch MNIST Example")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="input batch size for training (default: 64)")  # fmt: skip
    parser.add_argument("--test-batch-size", type=int, default=1000, metavar="N",
                        help="input batch size for testing (default: 1000)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=14, metavar="N",
                        help="number of epochs to train (default: 14)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=1.0, metavar="LR",
                        help="learning rate (default: 1.0)")  # fmt: skip
    parser.add_argument("--gamma", type=float, default=0.7, metavar="M",
                        help="Learning rate step gamma (default: 0.7)")  # fmt: skip
    parser.add_argument("--no-accel", action="store_true",
                        help="disables accelerator")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="quickly check a single pass")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, metavar="S",
                        help="random seed (default: 1)")  # fmt: skip
    parser.add_argument("--log-interval", type=int, default=10, metavar="N",
                        help="how many batches to wait before logging training status")  # fmt: skip
    parser.add_argument("--save-model", action="store_true",
                        help="For Saving the current Model")  # fmt: skip
    args = parser.parse_args()

    use_accel = not args.no_accel and torch.accelerator.is_available()

    torch.manual_seed(args.seed)

    device: torch.device | None
    if use_accel:  # noqa: SIM108 - as the script writes it
        device = torch.accelerator.current_accelerator()
    else:
        device = torch.device("cpu")

    train_kwargs = {"batch_size": args.batch_size}
    test_kwargs = {"batch_size": args.test_batch_size}
    if use_accel:
        accel_kwargs = {"num_workers": 1, "persistent_workers": True, "pin_memory": True,
                        "shuffle": True}  # fmt: skip
        train_kwargs.update(accel_kwargs)
        test_kwargs.update(accel_kwargs)

    dataset1 = digits(train=True)
    dataset2 = digits(train=False)
    train_loader = ResumableLoader(dataset1, **train_kwargs)  # cs
    test_loader = torch.utils.data.DataLoader(dataset2, **test_kwargs)

    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)

    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    state = TrainingState(model, optimizer, scheduler=scheduler, loader=train_loader)  # cs
    with cs.Checkpointer("mnist", every="10min", every_steps=10) as ckpt:  # cs
        for epoch in state.epochs(args.epochs, ckpt):  # cs
            train(args, model, device, train_loader, optimizer, epoch + 1, state, ckpt)  # cs
            test(model, device, test_loader)
            scheduler.step()

    if args.save_model:
        torch.save(model.state_dict(), "mnist_cnn.pt")


if __name__ == "__main__":
    main()
