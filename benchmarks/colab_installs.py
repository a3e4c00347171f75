"""Installing colabsession changes nothing Colab ships: a check against Colab's pip freezes.

    python benchmarks/colab_installs.py [--freezes ../shared/colab-runtime] [--extras drive gpu]

For each of Colab's published images (``py313-pip-freeze.txt``, ``.gpu``, ``.tpu``, and the
py312 ones) and each extra, in a scratch virtual environment of that Python:

1. ask pip what ``colabsession[extra]`` brings (a dry run, ignoring what is installed);
2. install the image's versions of those packages, exactly (``--no-deps``);
3. ask pip, as a user's ``%pip install "colabsession[extra] @ git+..."`` would run (no
   constraints), what it would install there (``--dry-run --report``);
4. fail if that replaces a version the image ships.

Prints one line per image and extra, and exits 1 if anything would change. Needs the package
index and the Python versions of the images (``python3.13``, ``python3.12``); an image whose
Python is missing is skipped, and said so.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = [
    "", "drive", "gpu", "plot", "tensorflow", "demo", "torch", "hf", "jax",
    "lightning", "tensorboard", "wandb", "torchdata", "safetensors",
]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_freeze(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[canonical(name.strip())] = version.strip()
    return found


def pip(python: Path, *args: str) -> str:
    result = subprocess.run(
        [str(python), "-m", "pip", *args, "--disable-pip-version-check", "--quiet"],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(f"pip {' '.join(args[:3])} failed: {result.stderr.strip()[-800:]}")
    return result.stdout


def report(python: Path, requirement: str, *extra: str) -> list[tuple[str, str]]:
    out = pip(python, "install", "--dry-run", "--report", "-", *extra, requirement)
    return [
        (canonical(i["metadata"]["name"]), i["metadata"]["version"])
        for i in json.loads(out)["install"]
    ]


def check(freeze_path: Path, python_exe: str, extras: list[str]) -> list[str]:
    freeze = read_freeze(freeze_path)
    problems = []
    with tempfile.TemporaryDirectory(prefix="cs-colab-installs-") as tmp:
        subprocess.run([python_exe, "-m", "venv", tmp], check=True)
        python = Path(tmp) / "bin" / "python"
        pip(python, "install", "--upgrade", "pip")
        for extra in extras:
            target = f"{ROOT}[{extra}]" if extra else str(ROOT)
            brings = report(python, target, "--ignore-installed")
            placed: set[str] = set()
            # The image's versions of what the extra brings, then of what those versions need in
            # turn (the image's pandas needs pytz, the newest does not), until nothing is left.
            wanted = {n for n, _ in brings}
            while True:
                shipped = sorted(n for n in wanted - placed if n in freeze and n != "colabsession")
                if not shipped:
                    break
                pip(python, "install", "--no-deps", *(f"{n}=={freeze[n]}" for n in shipped))
                placed.update(shipped)
                wanted = {n for n, _ in report(python, target)}
            changes = [
                f"{n} {freeze[n]} -> {v}"
                for n, v in report(python, target)
                if n in freeze and freeze[n] != v
            ]
            label = f"{freeze_path.name} [{extra or 'base'}]"
            if changes:
                problems.append(f"{label}: would change {', '.join(changes)}")
                print(f"CHANGES   {label}: {', '.join(changes)}", flush=True)
            else:
                new = sorted(
                    {n for n, _ in report(python, target)} - set(freeze) - {"colabsession"}
                )
                print(f"unchanged {label}; adds {', '.join(new) or 'nothing else'}", flush=True)
    return problems


def find_python(minor: str) -> str | None:
    """An interpreter of Python 3.*minor* that runs (a pyenv shim may not)."""
    candidates = [shutil.which(f"python3.{minor}")]
    candidates += sorted(
        str(p) for p in Path.home().glob(f".pyenv/versions/3.{minor}.*/bin/python3")
    )
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--freezes", type=Path, default=ROOT.parent / "shared" / "colab-runtime")
    parser.add_argument("--extras", nargs="+", default=EXTRAS, help="'' is the base install")
    args = parser.parse_args()
    problems = []
    for freeze_path in sorted(args.freezes.glob("py3*-pip-freeze*.txt")):
        version = re.match(r"py3(\d+)", freeze_path.name)
        assert version is not None
        python_exe = find_python(version[1])
        if python_exe is None:
            print(f"skipped   {freeze_path.name}: no python3.{version[1]} here", flush=True)
            continue
        extras = [
            e
            for e in args.extras
            if not (e in ("tensorflow", "demo") and "tpu" in freeze_path.name)
        ]
        if len(extras) < len(args.extras):
            print(f"note      {freeze_path.name}: no TensorFlow on TPU images: its extras skipped")
        problems += check(freeze_path, python_exe, extras)
    if problems:
        print(f"\n{len(problems)} install(s) would change what Colab ships", file=sys.stderr)
        raise SystemExit(1)
    print("\nno install changes anything Colab ships")


if __name__ == "__main__":
    main()
