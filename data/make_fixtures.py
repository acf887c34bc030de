"""Generate the tiny data fixtures (see data/README.md, "Fixtures") into a folder.

    python data/make_fixtures.py OUT_DIR

The generators live in :mod:`lift.data.fixtures` so tests and smoke runs can call them directly.
"""
import sys

from lift.data.fixtures import make_all

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data/make_fixtures.py OUT_DIR")
    print(make_all(sys.argv[1]))
