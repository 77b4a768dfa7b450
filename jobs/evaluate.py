"""Ray job entry point: the `evaluate` stage. Runs locally or via `ray job submit -- python jobs/evaluate.py`.

Usage: python jobs/evaluate.py --config configs/demo.yaml [--on-change rebuild|error] [--verbose] [key.sub=value ...]
"""

import os
import sys

# Replace this script's folder on sys.path with the package folder: jobs/tokenize.py must not
# shadow the stdlib module of the same name, and a plain checkout runs without installing.
sys.path[0] = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform")

from semconv.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(stage="evaluate"))
