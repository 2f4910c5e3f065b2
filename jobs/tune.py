"""Ray job entry point: `ray job submit --working-dir . -- python jobs/tune.py [--config FILE] [key=value ...]`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, when run from a working dir

from asd_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
