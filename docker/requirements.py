"""Print the requirements of the core plus some extras, read from pyproject.toml, one per line.

The Dockerfile installs these in a layer of their own, before the code, so that a code change
does not reinstall dependencies:

    python requirements.py serve > requirements.txt
    python requirements.py serve gpu --without onnxruntime > requirements.txt   # the CUDA image
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str], without: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    return [r for r in wanted if _name(r) not in without]


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    return match.group(0).lower() if match else requirement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("extras", nargs="*", help="extras of pyproject.toml to add to the core")
    parser.add_argument("--without", action="append", default=[], help="leave out this package")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.extras, [w.lower() for w in args.without])))


if __name__ == "__main__":
    main()
