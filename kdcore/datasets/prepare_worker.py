"""One decoding process of a prepared store: ``python -m kdcore.datasets.prepare_worker '<job json>'``.

Decodes its range of the array order into the store's arrays (see `kdcore.datasets.prepare`) and speaks on
stdout: ``progress <n>`` lines, and ``error <json message>`` for a member it cannot use (exit 2). It stops
(exit 3) when its parent is gone: a preparation killed mid-way leaves no decoding process behind.
"""
from __future__ import annotations

import json
import os
import sys

from .errors import DatasetError
from .prepare import decode_range


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    parent = int(job.get("parent", os.getppid()))

    def report(n: int) -> None:
        print(f"progress {n}", flush=True)

    try:
        decode_range(job, report, alive=lambda: os.getppid() == parent)
    except DatasetError as e:
        print(f"error {json.dumps(str(e))}", flush=True)
        return 2
    return 0 if os.getppid() == parent else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
