"""Ray job entry point: incremental refresh of a finished run from a delta (docs/refresh.md).

Usage: python jobs/refresh.py --config configs/demo.yaml run_dir=... refresh.interactions=URI refresh.items=URI [--verbose]
"""

import os
import sys

# Replace this script's folder on sys.path with the package folder: jobs/tokenize.py must not
# shadow the stdlib module of the same name, and a plain checkout runs without installing.
sys.path[0] = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform")

from semconv.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(stage="refresh"))
