"""The ``colabsession`` command line: ``colabsession --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import ColabSessionError
from ._version import __version__

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a colabsession error, 2 bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except ColabSessionError as exc:
        print(f"colabsession: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("colabsession: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colabsession",
        description="Keep long training jobs on Google Colab alive across restarts.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"colabsession {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    cmd = commands.add_parser("version", help="print the installed version")
    cmd.set_defaults(handler=_version)

    cmd = commands.add_parser("runtime", help="where this runs: Colab, Kaggle or local")
    _add_json(cmd)
    cmd.set_defaults(handler=_runtime)

    cmd = commands.add_parser("clock", help="session time used and left")
    _add_json(cmd)
    cmd.add_argument("--max-session", metavar="DURATION", help="session limit, e.g. 24h")
    cmd.set_defaults(handler=_clock)

    cmd = commands.add_parser("probe", help="CPU, RAM, disk, GPU, TPU and OS facts")
    _add_json(cmd)
    cmd.add_argument(
        "--frameworks", action="store_true", help="also list what TensorFlow, JAX, PyTorch see"
    )
    cmd.add_argument(
        "--benchmark", action="store_true", help="time a convolution and a matmul (TensorFlow)"
    )
    cmd.set_defaults(handler=_probe)

    env = commands.add_parser("env", help="pip installs that survive a runtime restart")
    actions = env.add_subparsers(title="actions", metavar="ACTION")
    cmd = actions.add_parser("install", help="install into an environment, persist it")
    cmd.add_argument("requirements", nargs="+", help="pip requirements")
    cmd.add_argument("--name", default="my_env")
    cmd.add_argument("--location", help="where environments are kept")
    cmd.add_argument(
        "--pip-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra pip argument, e.g. --pip-arg=--index-url=URL (repeatable)",
    )
    cmd.set_defaults(handler=_env_install)
    cmd = actions.add_parser("restore", help="bring an environment back after a restart")
    cmd.add_argument("--name", default="my_env")
    cmd.add_argument("--location")
    cmd.add_argument("--strict", action="store_true", help="fail instead of rebuilding")
    cmd.set_defaults(handler=_env_restore)
    cmd = actions.add_parser("list", help="the environments kept")
    cmd.add_argument("--location")
    _add_json(cmd)
    cmd.set_defaults(handler=_env_list)
    cmd = actions.add_parser("remove", help="delete an environment")
    cmd.add_argument("name")
    cmd.add_argument("--location")
    cmd.set_defaults(handler=_env_remove)
    env.set_defaults(handler=lambda args: _usage(env))

    cmd = commands.add_parser("demo", help="train a small CNN on the digits data with cs.fit")
    cmd.add_argument("--run", default="digits-cnn", help="the run's name (default digits-cnn)")
    cmd.add_argument("--epochs", type=int, default=20)
    cmd.add_argument("--location", help="where to keep the run (default drive:checkpoints/RUN)")
    cmd.set_defaults(handler=_demo)

    ckpt = commands.add_parser("ckpt", help="inspect a run's checkpoints and history")
    actions = ckpt.add_subparsers(title="actions", metavar="ACTION")
    for name, help_text, handler in (
        ("list", "committed checkpoints, newest last", _ckpt_list),
        (
            "verify",
            "check every checkpoint file and its checksums (exit 1 if one is damaged)",
            _ckpt_verify,
        ),
        ("history", "the loss history across sessions", _ckpt_history),
        ("plot", "plot the history to a PNG file", _ckpt_plot),
    ):
        cmd = actions.add_parser(name, help=help_text)
        cmd.add_argument(
            "location",
            metavar="RUN_OR_LOCATION",
            help="a run name (drive:checkpoints/NAME), or a location: drive:PATH, an fsspec URL, "
            "or a path that starts with /, ./, ../ or ~",
        )
        if name != "plot":
            _add_json(cmd)
        else:
            cmd.add_argument("-o", "--output", default="history.png", help="the PNG to write")
        cmd.set_defaults(handler=handler)
    ckpt.set_defaults(handler=lambda args: _usage(ckpt))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


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
    from ._runtime import runtime

    _print(runtime().to_dict(), args.json)
    return 0


def _clock(args: argparse.Namespace) -> int:
    from ._clock import SessionClock
    from ._units import format_duration

    data = SessionClock(max_session=args.max_session).to_dict()
    if not args.json:
        for key in ("max_session", "idle_limit", "elapsed", "remaining"):
            data[key] = format_duration(data[key])
    _print(data, args.json)
    return 0


def _probe(args: argparse.Namespace) -> int:
    from ._probe import probe

    report = probe(frameworks=args.frameworks)
    bench = None
    if args.benchmark:
        from ._benchmark import benchmark

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
    from ._checkpoint import Checkpointer

    ckpt = Checkpointer(args.location, every=None)
    rows: list[dict[str, Any]] = [
        {
            "step": info.step,
            "where": info.where,
            "created": info.created.isoformat(),
            "metrics": info.metrics,
        }
        for info in ckpt.checkpoints()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no checkpoints in {ckpt.location}")
    for row in [] if args.json else rows:
        metrics = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row["metrics"].items()
        )
        print(f"{row['step']:>10}  {row['created'] or '-':<32}  {metrics:<30}  {row['where']}")
    return 0


def _ckpt_verify(args: argparse.Namespace) -> int:
    from ._checkpoint import Checkpointer

    results = Checkpointer(args.location, every=None).verify()
    if args.json:
        print(json.dumps([{"step": s, "where": w, "problem": p} for s, w, p in results], indent=2))
    else:
        for step, where, problem in results:
            print(f"{step:>10}  {'ok' if problem is None else 'DAMAGED: ' + problem}  {where}")
        if not results:
            print(f"no checkpoints in {args.location}")
    return 1 if any(problem for _, _, problem in results) else 0


def _ckpt_history(args: argparse.Namespace) -> int:
    from ._history import read_history

    records = read_history(args.location)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    names = sorted({k for r in records for k in r} - {"step", "time", "session"})
    print("  ".join(["step".rjust(10), *(n.rjust(12) for n in names), "session"]))
    for r in records:
        cells = [f"{r[n]:.6g}" if isinstance(r.get(n), float) else str(r.get(n, "")) for n in names]
        print("  ".join([str(r["step"]).rjust(10), *(c.rjust(12) for c in cells), r["session"]]))
    return 0


def _ckpt_plot(args: argparse.Namespace) -> int:
    from ._optional import require

    matplotlib = require("matplotlib", extra="plot", purpose="colabsession ckpt plot")
    matplotlib.use("Agg")  # a file, no window
    from ._history import plot_history

    ax = plot_history(args.location)
    ax.figure.savefig(args.output, dpi=120, bbox_inches="tight")
    print(f"wrote {args.output}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(name=args.run, epochs=args.epochs, location=args.location)
    return 0


def _env_install(args: argparse.Namespace) -> int:
    from . import env

    env.install(*args.requirements, name=args.name, location=args.location, pip_args=args.pip_arg)
    return 0


def _env_restore(args: argparse.Namespace) -> int:
    from . import env

    info = env.restore(args.name, location=args.location, strict=args.strict)
    layer = env.local_path(info)
    # A command cannot change the shell that runs it: say how to use the extracted layer.
    print(
        f"environment {info.name!r}: {len(info.packages)} package(s) extracted to {layer}\n"
        f"use it from a shell with: export PYTHONPATH={layer}${{PYTHONPATH:+:$PYTHONPATH}} "
        f"PATH={layer}/bin:$PATH"
    )
    return 0


def _env_list(args: argparse.Namespace) -> int:
    from . import env

    found = env.list(args.location)
    if args.json:
        print(json.dumps([e.to_dict() for e in found], indent=2))
        return 0
    for e in found:
        packages = ", ".join(f"{n}=={v}" for n, v in e.packages) or "-"
        print(f"{e.name:<16} Python {e.python:<8} {e.size / 2**20:8.1f} MiB  {packages}")
    if not found:
        print("no environments")
    return 0


def _env_remove(args: argparse.Namespace) -> int:
    from . import env

    env.remove(args.name, args.location)
    print(f"removed environment {args.name!r}")
    return 0
