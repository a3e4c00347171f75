"""How long cs.hf.train blocks the Trainer per save, against the Trainer's own save.

    PYTHONPATH=$PWD python benchmarks/hf_save.py [--saves 6] [--layers 4]

A GPT-2 of about 10M parameters (a Trainer checkpoint of about 122 MB: the model's safetensors,
AdamW's moments, the scheduler, the RNG states) trained on the CPU with a save every 2 steps. Per
save, both measured in the same save, so both meet the same disk state:

- the Trainer's own save (``Trainer._save_checkpoint``: the files written, not fsynced);
- what cs.hf adds in the training thread (its ``on_save``), alternating save by save between the
  way it hands the folder over now (hard links, read by the writer in the background) and the way
  it did before (the files read into memory, then staged by the async save).

Reports the minimum and the median of each (the machine is shared: the minimum is the figure).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--saves", type=int, default=6, help="saves of each way")
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    where = Path(tempfile.mkdtemp(prefix="cs-hf-save-"))
    os.environ["COLABSESSION_HOME"] = str(where / "home")
    import torch
    import transformers

    import colabsession as cs
    from colabsession._training import hf

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.set_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=8000, n_positions=64, n_embd=384, n_layer=args.layers, n_head=6
        )
    )
    ids = torch.randint(0, 8000, (256, 16))
    data = [{"input_ids": row, "labels": row} for row in ids]
    saves = 2 * args.saves + 1  # the first is a warm-up
    targs = transformers.TrainingArguments(
        output_dir=str(where / "out"),
        max_steps=2 * saves,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
        logging_steps=50,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=data)

    timings: dict[str, list[float]] = {"Trainer's own save": [], "links": [], "read": []}
    ways: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
        "links": hf.hand_over,
        "read": lambda folder, staging: hf.read_folder(folder),
    }
    count = [0]
    own = trainer._save_checkpoint

    def trainer_save(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        result = own(*a, **k)
        timings["Trainer's own save"].append(time.perf_counter() - start)
        return result

    trainer._save_checkpoint = trainer_save
    on_save = hf.SessionCallback.on_save

    def timed_on_save(self: Any, *a: Any, **k: Any) -> Any:
        way = "links" if count[0] % 2 else "read"
        hf.hand_over = ways[way]  # type: ignore[assignment]
        start = time.perf_counter()
        result = on_save(self, *a, **k)
        timings[way].append(time.perf_counter() - start)
        count[0] += 1
        return result

    hf.SessionCallback.on_save = timed_on_save  # type: ignore[method-assign]
    try:
        cs.hf.train(trainer, where / "run", every=None, keep_last=2)
        report(timings, where, saves, args.saves)
    finally:
        hf.hand_over = ways["links"]  # type: ignore[assignment]
        hf.SessionCallback.on_save = on_save  # type: ignore[method-assign]
        shutil.rmtree(where, ignore_errors=True)


def report(
    timings: dict[str, list[float]],
    where: Path,
    saves: int,
    each: int,
) -> None:
    folder = where / "out" / f"checkpoint-{2 * saves}"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"Trainer checkpoint of {size / 1e6:.0f} MB, {each} saves of each way")
    trainer_times = timings["Trainer's own save"][1:]
    base = min(trainer_times)
    print(
        f"  {'Trainer own save':<48} min {base * 1e3:7.1f} ms  median "
        f"{statistics.median(trainer_times) * 1e3:7.1f} ms"
    )
    labels = {"links": "cs.hf adds, hard links (now)", "read": "cs.hf adds, read + stage (before)"}
    for way, label in labels.items():
        times = timings[way][1:] if way == "read" else timings[way]  # the first is a warm-up
        least = min(times)
        print(
            f"  {label:<48} min {least * 1e3:7.1f} ms  median "
            f"{statistics.median(times) * 1e3:7.1f} ms  -> blocked {(base + least) / base:.2f}x "
            "the Trainer's save"
        )


if __name__ == "__main__":
    main()
