"""Run every benchmark module with its defaults, one after the other; a failing one does not stop the others."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

import benchmarks


def main() -> int:
    failed = []
    for module_info in pkgutil.iter_modules(benchmarks.__path__):
        if module_info.name.startswith("_"):
            continue
        name = f"benchmarks.{module_info.name}"
        module = importlib.import_module(name)
        if not hasattr(module, "main"):
            continue
        print(f"\n## {name}\n", flush=True)
        sys.argv = [name]  # each module parses its own options; here it runs with its defaults
        try:
            status = module.main()
        except Exception:
            traceback.print_exc()
            status = 1
        if status:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
