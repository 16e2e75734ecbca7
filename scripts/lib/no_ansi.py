"""Fails when a captured log holds an ANSI escape code: the binaries (and the emulators as the project runs them)
write plain text unless their output is a terminal, and every log the test command captures is a file.

Usage: python scripts/lib/no_ansi.py --newer-than STAMP DIR...   (files modified after STAMP, under each DIR)
Prints one line with the count of logs checked; exits 1 naming each file (and its first such line) otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def first_escape_line(path: Path) -> int | None:
    """The line number of the first ANSI escape (an ESC byte) in the file at `path`, or None."""
    data = path.read_bytes()
    at = data.find(b"\x1b")
    return None if at < 0 else data[:at].count(b"\n") + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--newer-than", type=Path, help="only files modified after this file")
    parser.add_argument("dirs", nargs="+", type=Path)
    args = parser.parse_args()
    since = args.newer_than.stat().st_mtime if args.newer_than else 0.0
    checked, bad = 0, []
    for directory in args.dirs:
        if not directory.is_dir():
            continue
        for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in (".log", ".stdout", ".txt")):
            if path.stat().st_mtime < since:
                continue
            checked += 1
            line = first_escape_line(path)
            if line is not None:
                bad.append(f"{path}:{line}")
    if bad:
        print(f"ANSI escape codes in {len(bad)} captured log(s): " + ", ".join(bad), file=sys.stderr)
        return 1
    print(f"no ANSI escape code in {checked} captured logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
