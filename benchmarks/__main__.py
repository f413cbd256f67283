"""Run every benchmark module with its defaults, one after the other (or only those named:
`python -m benchmarks ingest`); a failing one does not stop the others."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

import benchmarks


def main(names: list[str]) -> int:
    available = [
        info.name for info in pkgutil.iter_modules(benchmarks.__path__) if not info.name.startswith("_")
    ]
    unknown = set(names) - set(available)
    if unknown:
        print(
            f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(available)}",
            file=sys.stderr,
        )
        return 2
    failed = []
    for name in names or available:
        module = importlib.import_module(f"benchmarks.{name}")
        if not hasattr(module, "main"):
            continue
        print(f"\n## benchmarks.{name}\n", flush=True)
        sys.argv = [
            f"benchmarks.{name}"
        ]  # each module parses its own options; here it runs with its defaults
        try:
            status = module.main()
        except Exception:  # noqa: BLE001 - report it and go on to the next benchmark
            traceback.print_exc()
            status = 1
        if status:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
