"""Write a pip constraints file that pins what one of Colab's images ships.

    python .ci/colab_constraints.py [--freeze ../shared/colab-runtime/py313-pip-freeze.txt]
                                    [--out .ci/colab-py313-cpu.txt]

The tests then run against Colab's versions (``tox -e colab``, and the second half of
``.ci/run``): ``pip install -c .ci/colab-py313-cpu.txt -e ".[all,test]"``. Colab's freeze names
its PyTorch builds by URL (``torch @ https://download.pytorch.org/whl/cpu/torch-2.11.0%2Bcpu-...``),
which only that index serves; the constraint keeps the version (``torch==2.11.0``) and lets the
package index choose the build. PyPI's build of that version is a CUDA one, which needs CUDA
libraries of its own choosing: the image's ``nvidia-*`` packages (there for other packages) are
left free. Lines pip cannot use as constraints (git and file URLs) and the packaging tools
themselves (pip, setuptools, wheel) are left out too.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {"pip", "setuptools", "wheel"}
_WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[0-9][^-+]*)(\+[^-]+)?-.*\.whl$")


def constraints(freeze: str) -> list[str]:
    """The constraint lines for a ``pip freeze`` text.

    >>> constraints("numpy==2.1.3\\ntorch @ https://x/cpu/torch-2.11.0%2Bcpu-cp313-cp313-a.whl")
    ['numpy==2.1.3', 'torch==2.11.0']
    """
    lines = []
    for line in freeze.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "==" in line:
            name, _, version = line.partition("==")
        elif " @ " in line:
            name, _, url = line.partition(" @ ")
            wheel = _WHEEL.match(unquote(url).split("#")[0].rsplit("/", 1)[-1])
            if wheel is None:  # a git checkout or a local file: nothing an index serves
                continue
            version = wheel["version"]
        else:
            continue
        name = name.strip()
        canonical = re.sub(r"[-_.]+", "-", name).lower()
        if canonical not in TOOLS and not canonical.startswith("nvidia-"):
            lines.append(f"{name}=={version.strip()}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--freeze", type=Path, default=ROOT.parent / "shared/colab-runtime/py313-pip-freeze.txt"
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".ci/colab-py313-cpu.txt")
    args = parser.parse_args()
    pins = constraints(args.freeze.read_text())
    header = [
        f"# What Colab's image ships, from {args.freeze.name} (googlecolab/backend-info),",
        "# as pip constraints. Made by .ci/colab_constraints.py: run it again when the freeze",
        "# changes. Used by `tox -e colab` and .ci/run.",
    ]
    args.out.write_text("\n".join([*header, *pins]) + "\n")
    print(f"{args.out}: {len(pins)} packages pinned")


if __name__ == "__main__":
    main()
