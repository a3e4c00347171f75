"""Tiny wheels built by the tests themselves (a wheel is a zip with its metadata), for real pip
runs with no index and no internet."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    requires: tuple[str, ...] = (),
    script: str | None = None,
    body: str = "",
) -> Path:
    """Build ``name-version-py3-none-any.whl`` in *folder*: a package ``name`` whose
    ``VERSION`` is *version*, with an optional console script running ``name:main``."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'VERSION = "{version}"\n{body}\n'
        'def main() -> None:\n    print("hello from", __name__, VERSION)\n',
        f"{dist}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: colabsession-tests\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/top_level.txt": f"{module}\n",
    }
    if script:
        files[f"{dist}/entry_points.txt"] = f"[console_scripts]\n{script} = {module}:main\n"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel
