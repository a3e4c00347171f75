"""What colabsession's PyTorch and Hugging Face helpers cost, side by side with the same loop
without them, and how long a save of a 200 MiB PyTorch state blocks training.

    python benchmarks/torch_training.py [--steps 400] [--mb 200] [--saves 5]

1. Per-step time of a small MLP loop on the CPU: a plain DataLoader (shuffled, seeded) versus
   ResumableLoader + TrainingState + Checkpointer.maybe_save(every="10min") (a save is not due
   within the run, so this is the per-step cost of the helpers themselves).
2. Per-step time of a tiny transformers Trainer: trainer.train() versus cs.hf.train(trainer).
3. Blocked time per save of a 200 MiB state (model + AdamW state): cs.Checkpointer's async save,
   torch.save (the loop waits for all of it), and torch.distributed.checkpoint.async_save where
   it runs without a process group.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import colabsession as cs
from colabsession.torch import ResumableLoader, TrainingState


def mlp() -> tuple[Any, Any, Any]:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8192, 256), torch.randint(0, 10, (8192,)))
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(512, 10)
    )
    return data, model, torch.optim.AdamW(model.parameters())


def step(model: Any, optimizer: Any, x: Any, y: Any) -> Any:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def loop_plain(steps: int) -> float:
    data, model, optimizer = mlp()
    loader = torch.utils.data.DataLoader(
        data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    done, start = 0, time.perf_counter()
    while done < steps:
        for x, y in loader:
            loss = step(model, optimizer, x, y)
            loss.item()
            done += 1
            if done == steps:
                break
    return (time.perf_counter() - start) / steps


def loop_colabsession(steps: int, where: Path) -> float:
    data, model, optimizer = mlp()
    loader = ResumableLoader(data, batch_size=64, shuffle=True, seed=0)
    state = TrainingState(model, optimizer, loader=loader)
    start = time.perf_counter()
    with cs.Checkpointer(where, every="10min") as ckpt:
        for _ in state.epochs(10**6, ckpt):
            for x, y in loader:
                loss = step(model, optimizer, x, y)
                state.step += 1
                ckpt.maybe_save(state.step, state.state_dict, metrics={"loss": loss.item()})
                if state.step == steps:
                    break
            if state.step == steps:
                break
        elapsed = time.perf_counter() - start
    return elapsed / steps


def trainer_steps(steps: int, where: Path, wrapped: bool) -> float:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.set_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=500, n_positions=64, n_embd=128, n_layer=2, n_head=4)
    )
    ids = torch.randint(0, 500, (4096, 64))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(where / "out"),
        max_steps=steps,
        per_device_train_batch_size=16,
        save_strategy="no",
        logging_steps=50,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    start = time.perf_counter()
    if wrapped:
        cs.hf.train(trainer, where / "run", every="10min")
    else:
        trainer.train()
    return (time.perf_counter() - start) / steps


def big_state(mb: int) -> tuple[Any, Any]:
    width = int((mb * 2**20 / 4 / 3) ** 0.5)  # weights + two AdamW moments ~ mb MiB
    model = torch.nn.Linear(width, width, bias=False)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()
    return model, optimizer


def blocked_saves(mb: int, saves: int, where: Path) -> dict[str, float]:
    model, optimizer = big_state(mb)

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    results = {}
    times = []
    with cs.Checkpointer(where / "cs", every=None, keep_last=2) as ckpt:
        for i in range(saves + 1):
            start = time.perf_counter()
            ckpt.save(i, state())
            times.append(time.perf_counter() - start)
            ckpt.wait()
    results["cs.Checkpointer async save"] = statistics.median(times[1:])  # (the first allocates)
    times = []
    for i in range(saves):
        start = time.perf_counter()
        torch.save(state(), where / f"torch-{i % 2}.pt")
        times.append(time.perf_counter() - start)
    results["torch.save"] = statistics.median(times)
    try:
        import torch.distributed.checkpoint as dcp

        times = []
        for i in range(saves):
            start = time.perf_counter()
            future = dcp.async_save(state(), checkpoint_id=str(where / f"dcp-{i}"), no_dist=True)
            times.append(time.perf_counter() - start)
            future.result()
        results["torch.distributed.checkpoint.async_save"] = statistics.median(times)
    except Exception as exc:  # no process group, or too old a torch
        print(f"(torch.distributed.checkpoint.async_save did not run: {exc!r:.120})")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--saves", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        plain = min(loop_plain(args.steps) for _ in range(3))
        ours = min(loop_colabsession(args.steps, where / f"loop{i}") for i in range(3))
        print(
            f"MLP loop, per step: plain {plain * 1e3:.3f} ms, with colabsession "
            f"{ours * 1e3:.3f} ms ({(ours / plain - 1) * 100:+.1f}%)"
        )
        hf_steps = max(50, args.steps // 4)
        bare = min(trainer_steps(hf_steps, where / f"t{i}", False) for i in range(2))
        wrapped = min(trainer_steps(hf_steps, where / f"w{i}", True) for i in range(2))
        print(
            f"Trainer, per step: trainer.train() {bare * 1e3:.2f} ms, cs.hf.train "
            f"{wrapped * 1e3:.2f} ms ({(wrapped / bare - 1) * 100:+.1f}%)"
        )
        for name, seconds in blocked_saves(args.mb, args.saves, where).items():
            print(f"{args.mb} MiB state, blocked per save: {name}: {seconds * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
