"""Per-chip LiteRT latency of every built model, on one thread (the edge device's budget per face).

    models/.venv/bin/python models/measure.py [--out DIR] [--runs 50]

Kept out of build.py: timings belong to the machine that runs this, not to the artifacts.
"""

import argparse
import json
from pathlib import Path

import litert_tools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "edge-face" / "models")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    manifest = json.loads((args.out / "manifest.json").read_text())
    print(f"{'artifact':<28} {'MB':>6} {'GMAC':>7} {'params':>11} {'ms/chip':>8}")
    for a in manifest["artifacts"]:
        ms = litert_tools.latency_ms(str(args.out / a["file"]), args.runs, args.threads)
        print(f"{a['name']:<28} {a['bytes'] / 1e6:>6.1f} {a['gmac']:>7.3f} {a['params']:>11,} {ms:>8.2f}")


if __name__ == "__main__":
    main()
