"""Session 27's server runs, one line per served run:

    python profiles/commands/s27_derived.py > profiles/runs/s27_derived.txt


Reads the archives the device calls brought back (`profiles/runs/s27_gpu/{d,e,f,g,i}_*/*.tgz`, each a folder of
`serve_vs_offline --trace` results) and prints, per run and concurrency: the served / offline output throughput, the
median TTFT, and from the server's trace when the burst's first request reached its handler (after the bench's
test request), how long handlers' adds waited before they were written to the core's pipe, and how many engine steps
ran before every sequence the engine holds was running.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1] / "runs" / "s27_gpu"


def main() -> None:
    for archive in sorted(RUNS.glob("[defgi]_*/*.tgz")):
        print(f"# {archive.relative_to(RUNS)}")
        with tarfile.open(archive) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if not re.fullmatch(r"svo_.*_\d\.json", member.name):
                    continue
                name = re.sub(r"^svo_|\.json$", "", member.name)
                for row in json.load(io.TextIOWrapper(tar.extractfile(member)))["rows"]:
                    tr, ttft = row["server"]["trace"], row["server"]["median_ttft_ms"]
                    print(
                        f"{name:20s} c={row['concurrency']:>4}  served/offline {row['throughput_ratio']:.3f}  "
                        f"TTFT median {ttft:5.0f} ms  first request {tr['first_http_s']:.2f} s  "
                        f"handler->pipe {tr['http_to_piped_ms']:6.1f} ms  full after {tr['steps_until_full']}"
                    )


if __name__ == "__main__":
    main()
