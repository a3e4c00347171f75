"""Memory and time of PyTorch saves and restores, side by side: what a big model on a small VM pays.

    python benchmarks/torch_memory.py [--mb 256] [--rounds 3] [--big-gb 2 --budget-mb 512]

The state is a model of Linear layers and AdamW's two moments (1/3 weights, 2/3 moments). Each
measurement runs in a child process of its own (so one contender's freed memory never hides
another's allocations), contenders alternating round by round, with glibc's mmap threshold
fixed (``MALLOC_MMAP_THRESHOLD_``: large buffers are mapped and unmapped, never silently reused
from the heap). Memory is read from /proc/self/status: the peak ``VmHWM`` after resetting it
through /proc/self/clear_refs ("5"), the peak of ``RssAnon`` sampled every millisecond during
restores by a process of its own (VmHWM also counts the pages of files mapped), and ``RssAnon``
(what stays), all as multiples of the state.

Saves (each contender writes a new file after deleting its previous one, so all meet the disk
in the same state): training blocked per save (the second save of the child, after a training
step), time until durable (fsynced), peak extra RSS during the saves, RSS still held after them.
- the floor: copying the state into preallocated tensors;
- cs.Checkpointer async (default budget, and a budget of 1/4 of the state) and sync; torch.save;
  DCP sync and async; safetensors.

Restores (the file evicted from the page cache first, into a fresh model and optimizer): the time
to load the state into them, the time with the first training step, peak extra RSS, and RSS held
after (the moments, 0.67x, must stay: they are the optimizer's state).
- cs TrainingState.restore into a fresh optimizer ("cs") and into one whose moments exist
  ("cs-into", read straight into them, as DCP loads); torch.load (plain and mmap=True); DCP load
  into the state_dict; safetensors load_file.

``--big-gb`` adds one async save of a larger state with ``memory_budget=--budget-mb``: its
blocked time and its peak extra RSS against the budget.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SAVERS = [
    "floor",
    "cs-async",
    "cs-async-budget",
    "cs-sync",
    "torch.save",
    "dcp-sync",
    "dcp-async",
    "safetensors",
]
LOADERS = ["cs", "cs-into", "torch.load", "torch.load-mmap", "dcp", "safetensors"]
ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "OMP_NUM_THREADS": "1"}
MB = 1 << 20


# Measuring ----------------------------------------------------------------------------------


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


_SAMPLER = """
import select, sys
path, peak = f"/proc/{sys.argv[1]}/status", 0
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.001)[0]:
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"RssAnon:"):
                peak = max(peak, int(line.split()[1]) * 1024)
                break
print(peak, flush=True)
"""


class AnonPeak:
    """The highest ``RssAnon`` seen, sampled every millisecond by a process of its own:
    ``VmHWM`` also counts the pages of files mapped (page cache, which the kernel drops under
    pressure). Not a thread of the measured process: one waking every millisecond took the GIL
    from the restore it measured (a colabsession restore ran 0.32 s under it, 0.19 s without)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SAMPLER, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()  # sampling from now on

    def stop(self) -> int:
        out, _ = self.process.communicate("stop\n", timeout=60)
        return max(int(out.split()[-1]), status("RssAnon"))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def evict(folder: Path) -> None:
    """Drop *folder*'s files from the page cache (clean pages: fsynced before)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def fsync_tree(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# The state ----------------------------------------------------------------------------------


def model_and_optimizer(mb: int) -> tuple[Any, Any]:
    import torch

    width = 1024
    layers = max(1, round(mb / 3 * MB / (width * width * 4)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step(model: Any, optimizer: Any) -> None:
    import torch

    optimizer.zero_grad(set_to_none=True)
    model(torch.randn(8, 1024)).square().mean().backward()
    optimizer.step()


def state_bytes(model: Any) -> int:
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def flat_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The state as one flat dict of tensors (safetensors takes only that)."""
    flat = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, moments in optimizer.state_dict()["state"].items():
        for name, value in moments.items():
            flat[f"opt.{index}.{name}"] = value.reshape(1) if value.dim() == 0 else value
    return flat


def load_flat(model: Any, optimizer: Any, flat: dict[str, Any]) -> None:
    model.load_state_dict({k[6:]: v for k, v in flat.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    moments: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = (
                value.reshape(()) if name == "step" else value
            )
    state["state"] = moments
    optimizer.load_state_dict(state)


def dcp_group() -> Any:
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group("gloo", rank=0, world_size=1)
    import torch.distributed.checkpoint as dcp

    return dcp


# One child's measurement ----------------------------------------------------------------------


def child_save(kind: str, mb: int, folder: Path, budget: int | None) -> dict[str, Any]:
    import torch

    model, optimizer = model_and_optimizer(mb)
    train_step(model, optimizer)
    size = state_bytes(model)
    shutil.rmtree(folder, ignore_errors=True)  # the disk state: a same-sized file just deleted
    folder.mkdir(parents=True)
    if kind.startswith("dcp"):
        dcp = dcp_group()
    if kind == "floor":
        spare = [t.clone() for t in flat_state(model, optimizer).values()]
    ckpt = None
    if kind.startswith("cs"):
        import colabsession as cs
        from colabsession.torch import TrainingState

        ts = TrainingState(model=model, optimizer=optimizer, rng=False)
        ckpt = cs.Checkpointer(
            folder / "run",
            every=None,
            keep_last=1,
            async_save=kind.startswith("cs-async"),
            memory_budget=size // 4 if kind == "cs-async-budget" else budget,
        )
    gc.collect()
    before = status("VmRSS")
    anon_before = status("RssAnon")
    reset_peak()
    blocked, durable = [], []
    future = None
    for step in range(2):
        train_step(model, optimizer)
        start = time.perf_counter()
        if kind == "floor":
            for dst, src in zip(spare, flat_state(model, optimizer).values(), strict=True):
                dst.copy_(src)
        elif kind.startswith("cs"):
            assert ckpt is not None
            ckpt.save(step, ts.state_dict())
        elif kind == "torch.save":
            with open(folder / f"s{step}.pt", "wb") as f:
                torch.save({"model": model.state_dict(), "opt": optimizer.state_dict()}, f)
                f.flush()
                os.fsync(f.fileno())
        elif kind == "dcp-sync":
            dcp.save(
                {"model": model.state_dict(), "opt": optimizer.state_dict()},
                checkpoint_id=str(folder / f"s{step}"),
            )
        elif kind == "dcp-async":
            if future is not None:
                future.result()
            future = dcp.async_save(
                {"model": model.state_dict(), "opt": optimizer.state_dict()},
                checkpoint_id=str(folder / f"s{step}"),
            )
        elif kind == "safetensors":
            from safetensors.torch import save_file

            save_file(flat_state(model, optimizer), str(folder / f"s{step}.st"))
            fd = os.open(folder / f"s{step}.st", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        blocked.append(time.perf_counter() - start)
        if kind.startswith("cs-async"):
            assert ckpt is not None
            ckpt.wait()
        elif kind == "dcp-async" and future is not None:
            future.result()
        if kind.startswith("dcp"):
            fsync_tree(folder / f"s{step}")
        durable.append(time.perf_counter() - start)
        for old in folder.glob(f"s{step - 1}*"):  # write first, then delete the older file
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    peak = status("VmHWM") - before
    gc.collect()
    held = status("RssAnon") - anon_before  # between saves, while training goes on
    if ckpt is not None:
        ckpt.close()
    return {
        "kind": kind,
        "size": size,
        "blocked": blocked[-1],
        "durable": durable[-1],
        "peak": peak / size,
        "held": held / size,
    }


def child_prepare(mb: int, folder: Path) -> None:
    """One checkpoint of the same state in each loader's format, for the restores."""
    import torch
    from safetensors.torch import save_file

    import colabsession as cs
    from colabsession.torch import TrainingState

    model, optimizer = model_and_optimizer(mb)
    train_step(model, optimizer)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with cs.Checkpointer(folder / "cs", every=None, async_save=False) as ckpt:
        ckpt.save(1, TrainingState(model=model, optimizer=optimizer, rng=False).state_dict())
    state = {"model": model.state_dict(), "opt": optimizer.state_dict()}
    torch.save(state, folder / "state.pt")
    dcp = dcp_group()
    dcp.save(state, checkpoint_id=str(folder / "dcp"))
    save_file(flat_state(model, optimizer), str(folder / "state.st"))
    fsync_tree(folder)


def child_load(kind: str, mb: int, folder: Path) -> dict[str, Any]:
    import torch

    model, optimizer = model_and_optimizer(mb)
    size = state_bytes(model)
    if kind == "dcp":
        dcp = dcp_group()
    if kind in ("dcp", "cs-into"):  # loads into an existing state_dict: moments must exist
        train_step(model, optimizer)
    # Every contender's modules are imported before the clock starts, as torch's and DCP's are:
    # a notebook imports them once, at its top, not per restore.
    import colabsession as cs
    from colabsession.torch import TrainingState

    if kind == "safetensors":
        from safetensors.torch import load_file
    evict(folder)
    gc.collect()
    before, anon_before = status("VmRSS"), status("RssAnon")
    reset_peak()
    anon = AnonPeak()
    start = time.perf_counter()
    if kind.startswith("cs"):
        with cs.Checkpointer(folder / "cs", every=None) as ckpt:
            TrainingState(model=model, optimizer=optimizer, rng=False).restore(ckpt)
    elif kind.startswith("torch.load"):
        state = torch.load(folder / "state.pt", mmap=kind.endswith("mmap"), weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["opt"])
        del state
    elif kind == "dcp":
        state = {"model": model.state_dict(), "opt": optimizer.state_dict()}
        dcp.load(state, checkpoint_id=str(folder / "dcp"))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["opt"])
        del state
    elif kind == "safetensors":
        load_flat(model, optimizer, load_file(str(folder / "state.st")))
    restored = time.perf_counter() - start
    anon_peak = anon.stop() - anon_before
    gc.collect()
    held = status("RssAnon") - anon_before  # before the step's gradients (0.33x) exist
    stepping = time.perf_counter()  # (the measuring above is not timed)
    train_step(model, optimizer)
    first = restored + time.perf_counter() - stepping
    gc.collect()
    return {
        "kind": kind,
        "size": size,
        "restore": restored,
        "first_step": first,
        "peak": (status("VmHWM") - before) / size,
        "anon_peak": anon_peak / size,
        "held": held / size,
    }


# The parent ---------------------------------------------------------------------------------


def rotated(kinds: list[str], turn: int) -> list[str]:
    """*kinds* starting at a different one each round: the disk's state after one contender
    (its page cache dropped, its writes) meets each of the others in turn, not always the same
    one (the first of a fixed order ran 0.17 s alone and 0.39 s as the first of every round)."""
    start = turn % len(kinds)
    return kinds[start:] + kinds[:start]


def run_child(*args: str) -> dict[str, Any]:
    env = {**os.environ, **ENV}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"child {args} failed")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="the state's size (model + AdamW)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-gb", type=float, default=0, help="also a state this large...")
    parser.add_argument("--budget-mb", type=int, default=512, help="...saved within this budget")
    parser.add_argument("--only", choices=["saves", "restores", "big"], default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, kind, mb, folder, *rest = args.child
        budget = int(rest[0]) if rest and rest[0] != "None" else None
        os.environ["COLABSESSION_HOME"] = str(Path(folder).parent / "home")
        if what == "save":
            result = child_save(kind, int(mb), Path(folder), budget)
        elif what == "load":
            result = child_load(kind, int(mb), Path(folder))
        else:
            child_prepare(int(mb), Path(folder))
            result = {}
        print(json.dumps(result))
        return

    tmp = Path(tempfile.mkdtemp(prefix="cs-mem-", dir=os.environ.get("BENCH_DIR")))
    print(
        f"state ~{args.mb} MB (1/3 Linear weights, 2/3 AdamW moments), {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs, {tmp}",
        flush=True,
    )
    try:
        if args.only in (None, "saves"):
            saves: dict[str, list[dict[str, Any]]] = {k: [] for k in SAVERS}
            for turn in range(args.rounds):
                for kind in rotated(SAVERS, turn):
                    saves[kind].append(
                        run_child("save", kind, str(args.mb), str(tmp / kind), "None")
                    )
            floor = statistics.median(r["blocked"] for r in saves["floor"])
            print("\nsaves          blocked   vs floor   durable   peak extra   held after")
            for kind, rows in saves.items():
                b = statistics.median(r["blocked"] for r in rows)
                d = statistics.median(r["durable"] for r in rows)
                p = statistics.median(r["peak"] for r in rows)
                h = statistics.median(r["held"] for r in rows)
                print(
                    f"{kind:<13} {b * 1e3:7.0f} ms  {b / floor:6.2f}x  {d * 1e3:7.0f} ms"
                    f"   {p:8.2f}x   {h:8.2f}x",
                    flush=True,
                )
        if args.only in (None, "restores"):
            run_child("prepare", "-", str(args.mb), str(tmp / "restore"))
            loads: dict[str, list[dict[str, Any]]] = {k: [] for k in LOADERS}
            for turn in range(args.rounds):
                for kind in rotated(LOADERS, turn):
                    loads[kind].append(run_child("load", kind, str(args.mb), str(tmp / "restore")))
            print("\nrestores (cold)   restore  + first step   peak extra  (anon)   held after")
            for kind, rows in loads.items():
                r = statistics.median(x["restore"] for x in rows)
                f = statistics.median(x["first_step"] for x in rows)
                p = statistics.median(x["peak"] for x in rows)
                a = statistics.median(x["anon_peak"] for x in rows)
                h = statistics.median(x["held"] for x in rows)
                print(
                    f"{kind:<16} {r:7.2f} s  {f:9.2f} s   {p:8.2f}x {a:7.2f}x   {h:8.2f}x",
                    flush=True,
                )
        if args.big_gb and args.only in (None, "big"):
            mb = int(args.big_gb * 1024)
            budget = args.budget_mb * MB
            r = run_child("save", "cs-async", str(mb), str(tmp / "big"), str(budget))
            size = r["size"]
            print(
                f"\n{size / MB:.0f} MB state, memory_budget={args.budget_mb} MB: blocked "
                f"{r['blocked']:.2f} s, durable {r['durable']:.2f} s, peak extra "
                f"{r['peak'] * size / MB:.0f} MB ({r['peak']:.2f}x), held after "
                f"{r['held'] * size / MB:.0f} MB",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
