"""`make bench`: run every benchmark (none of them is a test) and print their tables.

    python -m benchmarks [name ...]     # names: see BENCHES; default all
"""

from __future__ import annotations

import importlib
import sys
import time

#: benchmark name -> module with a ``main()`` that prints a table
BENCHES: dict[str, str] = {
    "vae": "benchmarks.vae",
    "mot": "benchmarks.mot",
    "t2m-metrics": "benchmarks.t2m_metrics",
    "caption-metrics": "benchmarks.caption_metrics",
    "generation": "benchmarks.generation",
}


def main(argv: list[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    for name in names:
        t0 = time.perf_counter()
        print(f"\n# bench: {name}")
        importlib.import_module(BENCHES[name]).main()
        print(f"({name}: {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
