"""The ``colabsession`` command line: ``colabsession --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from colabsession._core.errors import ColabSessionError, ConfigError

from ._version import __version__

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a colabsession error, 2 bad usage)."""
    from . import drive

    drive.local_notice(False)  # commands name the folders they use; no general notice
    parser = _parser()
    args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except ColabSessionError as exc:
        _error(str(exc))
        return 1
    except OSError as exc:  # a path or disk fault the command met: one line, not a traceback
        from colabsession._core.files import reason

        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _error(f"{where}{reason(exc)}")
        return 1
    except KeyboardInterrupt:
        print("colabsession: interrupted", file=sys.stderr)
        return 130


def _error(message: str) -> None:
    print(f"colabsession: error: {' '.join(message.split())}", file=sys.stderr)


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--epochs -3`` as ``--epochs=-3``: argparse reads ``-3`` and ``-5h`` as options and says
    "expected one argument"; joined, the value reaches its check, which says what is wrong."""
    out: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        following = items[index + 1] if index + 1 < len(items) else ""
        if item.startswith("--") and "=" not in item and re.match(r"-\.?\d", following):
            out.append(f"{item}={following}")
            index += 2
        else:
            out.append(item)
            index += 1
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _step(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _duration(text: str) -> str:
    from colabsession._core.units import parse_duration

    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
    try:
        seconds = parse_duration(text, name="it")
    except ColabSessionError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use seconds or a string like 45s, 90min, 12h or 1h30m"
        ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
    return text


def _command(
    group: Any, name: str, summary: str, description: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name, help=summary, description=description or f"{summary[0].upper()}{summary[1:]}."
    )
    return parser


_RUN_HELP = (
    "the run: a name (kept at drive:checkpoints/NAME) or a location: drive:PATH, an fsspec URL, "
    "or a path that starts with /, ./, ../ or ~"
)
_DATA_SOURCE_HELP = "a folder: drive:PATH, an fsspec URL or a local path"
_ENV_LOCATION_HELP = (
    "where environments are kept (default: drive:Colab Notebooks/colabsession/envs)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colabsession",
        description="Keep long training jobs on Google Colab alive across restarts. Outside "
        "Colab a local folder stands in for Google Drive.",
        epilog="`colabsession COMMAND --help` describes each command.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"colabsession {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    cmd = _command(commands, "version", "print the installed version")
    cmd.set_defaults(handler=_version)

    cmd = _command(
        commands,
        "runtime",
        "where this runs: Colab, Kaggle or local",
        "Where this runs (Colab, Kaggle or a local machine), colabsession's home folder and "
        "the folder that holds Google Drive (or stands in for it).",
    )
    _add_json(cmd)
    cmd.set_defaults(handler=_runtime)

    cmd = _command(
        commands,
        "clock",
        "session time used and left",
        "How long this runtime has run and how long Colab leaves it: 12 h by default "
        "(24 h with Colab Pro+; set --max-session or COLABSESSION_MAX_SESSION).",
    )
    _add_json(cmd)
    cmd.add_argument(
        "--max-session",
        metavar="DURATION",
        type=_duration,
        help="the session limit, e.g. 24h or 90min (default: COLABSESSION_MAX_SESSION, else 12h)",
    )
    cmd.set_defaults(handler=_clock)

    cmd = _command(
        commands,
        "probe",
        "CPU, RAM, disk, GPU, TPU and OS facts",
        "What this runtime has: CPU, RAM, disk, GPUs (NVML or nvidia-smi), TPU, in "
        "milliseconds and without importing a framework.",
    )
    _add_json(cmd)
    cmd.add_argument(
        "--frameworks", action="store_true", help="also list what TensorFlow, JAX, PyTorch see"
    )
    cmd.add_argument(
        "--benchmark", action="store_true", help="time a convolution and a matmul (TensorFlow)"
    )
    cmd.set_defaults(handler=_probe)

    env = _command(
        commands,
        "env",
        "pip installs that survive a runtime restart",
        "Persistent environments: packages installed once into a layer kept on Drive and "
        "restored after each restart in seconds.",
    )
    actions = env.add_subparsers(title="actions", metavar="ACTION")
    cmd = _command(actions, "install", "install packages into an environment and keep it")
    cmd.add_argument("requirements", nargs="+", help="pip requirements, e.g. 'transformers==4.46'")
    _add_env_name(cmd)
    cmd.add_argument("--location", help=_ENV_LOCATION_HELP)
    cmd.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra pip argument, e.g. --pip-arg=--index-url=URL (repeatable)",
    )
    cmd.set_defaults(handler=_env_install)
    cmd = _command(actions, "restore", "bring an environment back after a restart")
    _add_env_name(cmd, default=None)
    cmd.add_argument("--location", help=_ENV_LOCATION_HELP)
    cmd.add_argument(
        "--strict",
        action="store_true",
        help="fail instead of rebuilding when it was built for another Python",
    )
    cmd.set_defaults(handler=_env_restore)
    cmd = _command(actions, "list", "the environments kept")
    cmd.add_argument("--location", help=_ENV_LOCATION_HELP)
    _add_json(cmd)
    cmd.set_defaults(handler=_env_list)
    cmd = _command(actions, "remove", "delete an environment")
    cmd.add_argument("name", help="the environment's name")
    cmd.add_argument("--location", help=_ENV_LOCATION_HELP)
    cmd.set_defaults(handler=_env_remove)
    env.set_defaults(handler=lambda args: _usage(env))

    data = _command(
        commands,
        "data",
        "datasets from Drive at local-disk speed",
        "Datasets: pack a folder on Drive once into a few large shards, then stage it to the "
        "local disk in seconds in every session.",
    )
    actions = data.add_subparsers(title="actions", metavar="ACTION")
    cmd = _command(
        actions,
        "pack",
        "pack a folder into shards (default: SOURCE.packed beside it)",
        "Pack a folder into tar shards with a manifest, committed last (default: "
        "SOURCE.packed beside it). Packing again is incremental.",
    )
    cmd.add_argument("source", help=_DATA_SOURCE_HELP)
    cmd.add_argument("--dest", help="where to write the shards (default: SOURCE.packed)")
    cmd.add_argument("--shard-size", default="256MiB", help="file data per shard (default: 256MiB)")
    cmd.add_argument(
        "--compression",
        choices=("zstd", "none"),
        default="zstd",
        help="zstd (default) or none (plain tar, as WebDataset reads it)",
    )
    cmd.add_argument(
        "--workers", type=_positive_int, default=32, help="files read at once (default: 32)"
    )
    cmd.add_argument(
        "--verify",
        action="store_true",
        help="read back the shards kept from before and check their sha256",
    )
    cmd.set_defaults(handler=_data_pack)
    cmd = _command(
        actions,
        "stage",
        "copy a dataset to the local disk and print its path",
        "Copy a dataset (packed, an archive, or a plain folder) to the local disk, verified, "
        "and print the local folder. An unchanged source is not copied again.",
    )
    cmd.add_argument("source", help=_DATA_SOURCE_HELP + ", or a .zip/.tar/.tar.gz/.tar.zst file")
    cmd.add_argument("--dest", help="the local folder (default: one under colabsession's home)")
    cmd.add_argument(
        "--workers",
        type=_positive_int,
        help="copies at once (default: 8 shards, or 32 files of an unpacked folder)",
    )
    cmd.set_defaults(handler=_data_stage)
    cmd = _command(
        actions,
        "ls",
        "datasets in a folder, or staged on this machine",
        "The datasets in a folder (packed, archives, plain folders), or with no folder given, "
        "those staged on this machine.",
    )
    cmd.add_argument("location", nargs="?", help="a folder, e.g. drive:datasets")
    _add_json(cmd)
    cmd.set_defaults(handler=_data_ls)
    data.set_defaults(handler=lambda args: _usage(data))

    cache = _command(
        commands,
        "cache",
        "framework caches (Hugging Face, torch, Keras) kept on Drive",
        "Framework caches kept on Drive: save them after a download (only what is new is "
        "uploaded), restore them at the start of each session.",
    )
    actions = cache.add_subparsers(title="actions", metavar="ACTION")
    for name, help_text, handler in (
        ("save", "save caches to Drive (default: every known one here)", _cache_save),
        ("restore", "restore caches from Drive (default: every known one there)", _cache_restore),
        ("ls", "the caches kept on Drive and their size", _cache_ls),
        ("prune", "make the caches on Drive smaller", _cache_prune),
    ):
        cmd = _command(actions, name, help_text)
        cmd.add_argument(
            "caches",
            nargs="*",
            metavar="CACHE",
            help="huggingface, torch, keras, datasets, or a folder's path",
        )
        cmd.add_argument(
            "--location",
            help="where caches are kept (default: drive:Colab Notebooks/colabsession/caches)",
        )
        if name == "ls":
            _add_json(cmd)
        if name == "prune":
            cmd.add_argument(
                "--older-than", type=_duration, help="drop files no save has seen for this long"
            )
            cmd.add_argument("--max-size", help="keep each cache under this size, e.g. 5GB")
        cmd.set_defaults(handler=handler)
    cache.set_defaults(handler=lambda args: _usage(cache))

    cmd = _command(
        commands,
        "demo",
        "train a small CNN on the digits data with cs.fit",
        "Train a small CNN on scikit-learn's digits with cs.fit, checkpointing as it goes. "
        "Interrupt it (Ctrl-C) and run it again: it resumes where it stopped.",
    )
    cmd.add_argument(
        "--run",
        default="digits-cnn",
        help="the run: a name (kept at drive:checkpoints/NAME) or a location (default: digits-cnn)",
    )
    cmd.add_argument(
        "--epochs", type=_positive_int, default=20, help="how many epochs in all (default: 20)"
    )
    cmd.add_argument("--location", help=argparse.SUPPRESS)  # deprecated: --run takes locations
    cmd.add_argument(
        "--restart",
        action="store_true",
        help="start the run over (its checkpoints are set aside, not deleted)",
    )
    cmd.set_defaults(handler=_demo)

    ckpt = _command(
        commands,
        "ckpt",
        "inspect a run's checkpoints and history",
        "Inspect a run: its checkpoints, their checksums, its loss history; or take it over "
        "from a notebook that is gone.",
    )
    actions = ckpt.add_subparsers(title="actions", metavar="ACTION")
    for name, help_text, handler in (
        ("list", "committed checkpoints, oldest first", _ckpt_list),
        (
            "verify",
            "check every checkpoint file and its checksums (exit 1 if one is damaged)",
            _ckpt_verify,
        ),
        ("history", "the loss history across sessions", _ckpt_history),
        ("plot", "draw the history to an image file", _ckpt_plot),
        (
            "takeover",
            "take a run from a notebook that is gone, so the next one can write it",
            _ckpt_takeover,
        ),
    ):
        cmd = _command(actions, name, help_text)
        cmd.add_argument("run", metavar="RUN", help=_RUN_HELP)
        if name in ("list", "verify", "history"):
            _add_json(cmd)
        if name == "plot":
            cmd.add_argument(
                "-o",
                "--output",
                default="history.png",
                help="the image to write: .png, .svg, .pdf, ... (default: history.png)",
            )
        cmd.set_defaults(handler=handler)
    cmd = _command(
        actions,
        "export",
        "write a checkpoint to safetensors (+ JSON) or a torch.save file",
        "Write a run's newest checkpoint (or --step's) for other tools: a .safetensors file of "
        "its arrays plus a .json beside it of the rest, or one torch.save file.",
    )
    cmd.add_argument("run", metavar="RUN", help=_RUN_HELP)
    cmd.add_argument("output", metavar="OUT", help="the file to write, e.g. model.safetensors")
    cmd.add_argument(
        "--to",
        choices=("safetensors", "torch"),
        help="the format (default: safetensors for a .safetensors OUT, else torch)",
    )
    cmd.add_argument("--step", type=_step, help="the checkpoint's step (default: the newest)")
    cmd.set_defaults(handler=_ckpt_export)
    cmd = _command(
        actions,
        "import",
        "save a safetensors or torch.save file as a checkpoint of a new run",
        "Save the state in a .safetensors file (with the .json beside it that export writes, "
        "or alone) or a torch.save file (read with weights_only=True) as a checkpoint of a run "
        "that has none yet.",
    )
    cmd.add_argument("source", metavar="FILE", help="the file to read")
    cmd.add_argument("run", metavar="RUN", help=_RUN_HELP)
    cmd.add_argument(
        "--from",
        dest="format",
        choices=("safetensors", "torch"),
        help="the format (default: safetensors for a .safetensors FILE, else torch)",
    )
    cmd.add_argument(
        "--step", type=_step, help="the checkpoint's step (default: the exported one, else 0)"
    )
    cmd.set_defaults(handler=_ckpt_import)
    ckpt.set_defaults(handler=lambda args: _usage(ckpt))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_env_name(cmd: argparse.ArgumentParser, default: str | None = "my_env") -> None:
    cmd.add_argument("--name", default=default, help="the environment's name (default: my_env)")


def _add_json(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    width = max(map(len, data), default=0)
    for key, value in data.items():
        print(f"{key:<{width}}  {'-' if value is None else value}")


def _version(args: argparse.Namespace) -> int:
    print(__version__)
    return 0


def _runtime(args: argparse.Namespace) -> int:
    from colabsession._runtime.runtime import runtime

    _print(runtime().to_dict(), args.json)
    return 0


def _clock(args: argparse.Namespace) -> int:
    from colabsession._core.units import format_duration
    from colabsession._runtime.clock import SessionClock

    data = SessionClock(max_session=args.max_session).to_dict()
    if not args.json:
        for key in ("max_session", "idle_limit", "elapsed", "remaining"):
            data[key] = format_duration(data[key])
    _print(data, args.json)
    return 0


def _probe(args: argparse.Namespace) -> int:
    from colabsession._runtime.probe import probe

    report = probe(frameworks=args.frameworks)
    bench = None
    if args.benchmark:
        from colabsession._runtime.benchmark import benchmark

        bench = benchmark()
    if args.json:
        data = report.to_dict()
        if bench is not None:
            data["benchmark"] = [
                {**vars(r), "matmul_tflops": r.matmul_tflops} for r in bench.results
            ]
        print(json.dumps(data, indent=2))
    else:
        print(report.table())
        if bench is not None:
            print()
            print(bench.table())
    return 0


def _ckpt_list(args: argparse.Namespace) -> int:
    from colabsession._storage.checkpointer import Checkpointer
    from colabsession._storage.history import for_display
    from colabsession._storage.runs import require_run

    ckpt = Checkpointer(args.run, every=None)
    found = ckpt.checkpoints()
    if not found:
        require_run(ckpt.location)  # nothing there at all is a typo: it names the runs there are
    states = ckpt.drive_states() if found else {}
    rows: list[dict[str, Any]] = [
        {
            "step": info.step,
            "where": info.where,
            "created": info.created.isoformat(timespec="seconds"),
            "metrics": for_display([info.metrics])[0],
            **({"drive": states[info.step]} if info.step in states else {}),
        }
        for info in found
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no checkpoints in {ckpt.location} yet (only its history)")
        return 0
    width = max(len(row["where"]) for row in rows)
    print(f"{'step':>10}  {'created (UTC)':<25}  {'where':<{width}}  metrics")
    for row in rows:
        metrics = dict(row["metrics"])
        epoch = metrics.pop("epoch", None)
        shown = ([f"epoch={epoch}"] if epoch is not None else []) + [
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        ]
        print(
            f"{row['step']:>10}  {row['created']:<25}  {row['where']:<{width}}  "
            f"{' '.join(shown) or '-'}"
        )
    if states:
        print(f"\n{'step':>10}  {ckpt.location}")
        for step, state in sorted(states.items()):
            print(f"{step:>10}  {state}")
    return 0


def _ckpt_verify(args: argparse.Namespace) -> int:
    from colabsession._storage.checkpointer import Checkpointer
    from colabsession._storage.runs import require_run

    ckpt = Checkpointer(args.run, every=None)
    results = ckpt.verify()
    if not results:
        require_run(ckpt.location)
    if args.json:
        print(json.dumps([r._asdict() for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.step:>10}  {'ok' if r.ok else f'DAMAGED: {r.problem}'}  {r.where}")
        if not results:
            print(f"no checkpoints in {ckpt.location} yet (only its history)")
    return 0 if all(r.ok for r in results) else 1


def _ckpt_history(args: argparse.Namespace) -> int:
    from colabsession._storage.history import history

    records = history(args.run)
    if args.json:
        print(json.dumps(records.rows, indent=2))
        return 0
    if not records:
        print(f"no history in {args.run} yet")
        return 0
    epochs = any("epoch" in r for r in records)
    names = (["epoch"] if epochs else []) + records.metrics
    print("  ".join(["step".rjust(10), *(n.rjust(12) for n in names), "session"]))
    for r in records:
        cells = [f"{r[n]:.6g}" if isinstance(r.get(n), float) else str(r.get(n, "")) for n in names]
        print("  ".join([str(r["step"]).rjust(10), *(c.rjust(12) for c in cells), r["session"]]))
    return 0


def _ckpt_plot(args: argparse.Namespace) -> int:
    import os

    from colabsession._core.optional import require

    matplotlib = require("matplotlib", extra="plot", purpose="colabsession ckpt plot")
    matplotlib.use("Agg")  # a file, no window
    from matplotlib.figure import Figure

    from colabsession._storage.history import plot_history

    # Checked before the history is read: a typo in -o should not cost a Drive round trip.
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise ConfigError(
            f"cannot write {args.output}: the folder {folder} does not exist; create it or "
            "choose another -o"
        )
    suffix = os.path.splitext(args.output)[1].lstrip(".").lower()
    formats = Figure().canvas.get_supported_filetypes()
    if suffix not in formats:
        raise ConfigError(
            f"cannot write {args.output}: "
            + (f"{suffix!r} is not an image format" if suffix else "the name has no extension")
            + f" matplotlib writes; use one of .{', .'.join(sorted(formats))}"
        )
    axes = plot_history(args.run)
    axes[0].figure.savefig(args.output, dpi=120, bbox_inches="tight")
    print(f"wrote {args.output}")
    return 0


def _ckpt_export(args: argparse.Namespace) -> int:
    from colabsession._storage.portable import export_checkpoint, format_of, json_beside

    out = export_checkpoint(args.run, args.output, step=args.step, format=args.to)
    side = f" and {json_beside(out)}" if format_of(out, args.to) == "safetensors" else ""
    print(f"wrote {out}{side}")
    return 0


def _ckpt_import(args: argparse.Namespace) -> int:
    from colabsession._storage.portable import import_checkpoint

    step = import_checkpoint(args.source, args.run, step=args.step, format=args.format)
    print(f"saved {args.source} as step {step} of {args.run}")
    return 0


def _ckpt_takeover(args: argparse.Namespace) -> int:
    from colabsession._storage.checkpointer import Checkpointer
    from colabsession._storage.runs import require_run

    ckpt = Checkpointer(args.run, every=None)
    held_by = ckpt.revoke_lease()
    if held_by is None:
        require_run(ckpt.location)
        print(f"nobody holds {args.run}: the next notebook that trains it writes it")
    else:
        print(
            f"took {args.run} from {held_by}: the next notebook that trains it writes it "
            "(that one, if still running, stops at its next save)"
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    if args.location is not None:
        print(
            "colabsession: --location is deprecated and will be removed in the next release: "
            "give the location as --run",
            file=sys.stderr,
        )
    run(run=args.location or args.run, epochs=args.epochs, restart=args.restart)
    return 0


def _env_install(args: argparse.Namespace) -> int:
    from . import env

    env.install(*args.requirements, name=args.name, location=args.location, pip_args=args.pip_arg)
    return 0


def _env_restore(args: argparse.Namespace) -> int:
    from . import env

    info = env.restore(args.name, location=args.location, strict=args.strict)
    if info is None:
        return 0
    layer = env.local_path(info)
    # A command cannot change the shell that runs it: say how to use the extracted layer.
    print(
        f"environment {info.name!r}: {len(info.packages)} package(s) extracted to {layer}\n"
        f"use it from a shell with: export PYTHONPATH={layer}${{PYTHONPATH:+:$PYTHONPATH}} "
        f"PATH={layer}/bin:$PATH"
    )
    return 0


def _env_list(args: argparse.Namespace) -> int:
    from colabsession._core.units import format_bytes

    from . import env

    found = env.list(args.location)
    if args.json:
        print(json.dumps([e.to_dict() for e in found], indent=2))
        return 0
    for e in found:
        packages = ", ".join(f"{n}=={v}" for n, v in e.packages) or "-"
        size = format_bytes(e.size)  # on Drive
        print(f"{e.name:<16} Python {e.python:<8} {size:>10}  {packages}")
    if not found:
        print("no environments yet: cs.env.install('package', ...) or `colabsession env install`")
    return 0


def _env_remove(args: argparse.Namespace) -> int:
    from . import env

    env.remove(args.name, args.location)
    print(f"removed environment {args.name!r}")
    return 0


def _data_pack(args: argparse.Namespace) -> int:
    from . import data

    data.pack(
        args.source,
        args.dest,
        shard_size=args.shard_size,
        compression=args.compression,
        workers=args.workers,
        verify=args.verify,
    )
    return 0


def _data_stage(args: argparse.Namespace) -> int:
    from . import data

    path = data.stage(args.source, args.dest, workers=args.workers)
    print(path)
    return 0


def _data_ls(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from colabsession._core.units import format_bytes

    from . import data

    if args.location is None:
        staged = data.staged()
        if args.json:
            print(json.dumps([asdict(s) for s in staged], indent=2))
            return 0
        if not staged:
            print("nothing staged on this machine yet: colabsession data stage SOURCE")
        for s in staged:
            print(f"{s.path}  {s.files:,} files  {format_bytes(s.size)}  from {s.source}")
        return 0
    found = data.list(args.location)
    if args.json:
        print(json.dumps([asdict(e) for e in found], indent=2))
        return 0
    if not found:
        print(f"no datasets in {args.location}")
    for e in found:
        files = "-" if e.files is None else f"{e.files:,} files"
        shards = "" if e.shards is None else f"  {e.shards} shard(s)"
        hint = "  (not packed: colabsession data pack)" if e.kind == "folder" else ""
        print(f"{e.name:<24} {e.kind:<8} {files:>14} {format_bytes(e.size):>10}{shards}{hint}")
    return 0


def _cache_save(args: argparse.Namespace) -> int:
    from . import cache

    if not cache.save(*args.caches, location=args.location):
        print("no known cache on this machine yet: name one, or give a folder's path")
    return 0


def _cache_restore(args: argparse.Namespace) -> int:
    from . import cache

    if not cache.restore(*args.caches, location=args.location):
        print("no cache kept on Drive yet: colabsession cache save")
    return 0


def _cache_ls(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from colabsession._core.units import format_bytes

    from . import cache

    found = cache.size(*args.caches, location=args.location)
    if args.json:
        print(json.dumps([asdict(c) for c in found], indent=2))
        return 0
    if not found:
        print("no cache kept on Drive yet: colabsession cache save")
    for c in found:
        print(
            f"{c.name:<24} {c.files:>8,} files {format_bytes(c.bytes):>10}  "
            f"{format_bytes(c.stored):>10} on Drive  saved {c.saved[:19]}  ({c.path})"
        )
    return 0


def _cache_prune(args: argparse.Namespace) -> int:
    from . import cache

    cache.prune(
        *args.caches,
        older_than=args.older_than,
        max_size=args.max_size,
        location=args.location,
    )
    return 0
