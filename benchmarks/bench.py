"""The benchmark suite; the same as ``diffenvs bench`` (see ``diffenvs.bench``).

    python benchmarks/bench.py            # default and paper presets, 3 repeats
    python benchmarks/bench.py --quick    # default preset, 1 repeat
"""

import sys

from diffenvs.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
