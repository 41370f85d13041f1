"""The wheelhouse `make gpu-wheels` fills (.whl/): what is in it, for which interpreter,
and whether it fits what a lent GPU machine can carry.

    python bench/wheelhouse.py .whl --limit-mib 50
    python3 bench/wheelhouse.py .whl --install /tmp/dasd-gpu-site [--pure-only]

Prints one line per wheel and the total; exits 1 when the total is over the limit, a
wheel is not for CPython 3.12 (or any Python 3) on x86_64 Linux, or a required wheel is
missing. ``--install DIR`` then puts the wheels into DIR (for PYTHONPATH) with
``pip install --no-index --no-deps --target``, or, where the interpreter has no pip, by
unpacking them (a wheel is a zip of its installed files); ``--pure-only`` takes only the
``py3-none-any`` wheels (a CPU dry run on another Python), ``--except NAME`` leaves one out.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# What the GPU image lacks and the check needs, by distribution name (normalized).
REQUIRED = ("dasd", "orjson", "zstandard", "liger_kernel", "deepspeed", "quicktok_v1")


def tags(wheel: Path) -> tuple[str, str, str, str]:
    """(distribution, python tag, abi tag, platform tag) from a wheel's file name."""
    parts = wheel.name[:-len(".whl")].split("-")
    return parts[0].lower(), parts[-3], parts[-2], parts[-1]


def problems(folder: Path, limit_mib: float) -> tuple[list[str], list[str]]:
    """(lines describing the wheels, problems found)."""
    wheels = sorted(folder.glob("*.whl"))
    lines, found = [], []
    total = 0
    for wheel in wheels:
        size = wheel.stat().st_size
        total += size
        _name, python, abi, platform = tags(wheel)
        lines.append(f"{size / 2**20:7.2f} MiB  {wheel.name}")
        if not (python in ("py3", "cp312") or python.startswith("py3")) or abi not in ("none", "cp312", "abi3"):
            found.append(f"{wheel.name}: not for CPython 3.12")
        if platform != "any" and not all("x86_64" in p and "linux" in p for p in platform.split(".")):
            found.append(f"{wheel.name}: not for x86_64 Linux")
    lines.append(f"{total / 2**20:7.2f} MiB  total of {len(wheels)} wheels (limit {limit_mib:g} MiB)")
    if total > limit_mib * 2**20:
        found.append(f"the wheels take {total / 2**20:.1f} MiB, over the {limit_mib:g} MiB limit")
    names = {tags(w)[0] for w in wheels}
    found += [f"no {name} wheel" for name in REQUIRED if name not in names]
    return lines, found


def install(wheels: list[Path], target: Path) -> None:
    """The wheels' files under ``target``, replacing what was there."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if importlib.util.find_spec("pip") is not None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                        str(target), *map(str, wheels)], check=True)
        return
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    for data in target.glob("*.data"):  # files a wheel puts beside the packages
        for scheme in ("purelib", "platlib"):
            if (data / scheme).is_dir():
                shutil.copytree(data / scheme, target, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--limit-mib", type=float, default=50)
    parser.add_argument("--install", type=Path, metavar="DIR", help="install the wheels into DIR")
    parser.add_argument("--pure-only", action="store_true", help="with --install: only py3-none-any wheels")
    parser.add_argument("--except", dest="skip", action="append", default=[], metavar="NAME",
                        help="with --install: leave this distribution out (repeatable)")
    args = parser.parse_args(argv)
    lines, found = problems(args.folder, args.limit_mib)
    print("\n".join(lines))
    for problem in found:
        print(f"wheelhouse: {problem}", file=sys.stderr)
    if found:
        return 1
    if args.install is not None:
        wheels = [w for w in sorted(args.folder.glob("*-py3-none-any.whl" if args.pure_only else "*.whl"))
                  if tags(w)[0] not in {name.replace("-", "_").lower() for name in args.skip}]
        install(wheels, args.install)
        print(f"installed {len(wheels)} wheels into {args.install}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
