"""The fault suite (issue 15, docs/RELIABILITY.md): ``python bench/faults.py --help``.

The code is the package bench/faults/ (a folder beside this script: Python imports the package
for ``bench.faults``, this file is only the command)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from bench.faults.suite import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
