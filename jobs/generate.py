"""Entry point for `ray job submit … -- python jobs/generate.py --manifest … --out …`.

It runs the `synthgen generate` command itself, so a submitted job takes exactly the CLI's arguments and
exit codes (2 for bad input). Inside a job Ray sets RAY_ADDRESS, and `generate` joins that cluster.
"""

import sys

from synthgen.cli import app

if __name__ == "__main__":
    app(args=["generate", *sys.argv[1:]], prog_name="jobs/generate.py")
