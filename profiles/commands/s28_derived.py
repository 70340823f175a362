"""Session 28's (and later sessions') decode-attention probes, row by row:

    python profiles/commands/s28_derived.py > profiles/runs/s28_derived.txt
    python profiles/commands/s28_derived.py --runs profiles/runs/s29_gpu --before before29 \
        > profiles/runs/s29_derived.txt

Reads `profiles/runs/s28_gpu/{a,b,c,e}_*/probe_{before,after}_{hq}_{hk}.json` (`wide_split_probe.py --options`, run by
`profiles/commands/s28_gpu.sh PART=probe` on two trees in one call), or with `--runs` every such pair in that folder's
run folders, also inside their `.tgz` archives (`b18_{before,after}.json` too: batch 1-8), and prints, per card, head
layout, batch and
context: the HBM floor, the engine's time on each tree (us per layer) with the change and the split counts, each
option on each tree, and the engine's ratio to the floor on the tree after. Then, per file pair, the range of the
change over the rows whose split count the tree after left alone, and the largest error against the fp32 reference.
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1] / "runs" / "s28_gpu"


def pairs(runs: Path | None, tag: str) -> list[tuple[str, dict, dict]]:
    """(run folder, probe before, probe after) of each pair, in name order."""
    if runs is None:  # session 28's own folders and names
        return [(f.parent.name, json.loads(f.read_text()), json.loads(f.with_name(f.name.replace("before", "after"))
                 .read_text())) for f in sorted(RUNS.glob("[abce]_*/probe_before_*.json"))]  # fmt: skip
    files: dict[tuple[str, str], bytes] = {}
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        for f in folder.iterdir():
            if f.suffix == ".json":
                files[folder.name, f.name] = f.read_bytes()
            elif f.name.endswith(".tgz"):
                with tarfile.open(f) as tar:
                    for m in tar.getmembers():
                        if m.name.endswith(".json"):
                            files[folder.name, Path(m.name).name] = tar.extractfile(m).read()
    out = []
    for (folder, name), data in sorted(files.items()):
        if name.startswith(("probe_", "b18_")) and f"_{tag}" in name:
            after = files.get((folder, name.replace(f"_{tag}", "_after")))
            if after is not None:
                out.append((folder, json.loads(data), json.loads(after)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, help="a session's runs folder (default: session 28's, its own file names)")
    ap.add_argument("--before", default="before", help="the tree name before (file names probe_<before>_*.json)")
    args = ap.parse_args()
    for folder, b, a in pairs(args.runs, args.before):
        labels, heads = list(a["rows"][0]["options"]), f"{a['rows'][0]['hq']}/{a['rows'][0]['hk']}"
        print(f"# {folder} {a['card']} {heads} heads; engine before -> after; options before/after: "
              f"{', '.join(labels)}")  # fmt: skip
        alone = []
        for rb, ra in zip(b["rows"], a["rows"]):
            eb, ea = rb["engine"]["us"], ra["engine"]["us"]
            opts = " ".join(f"{rb['options'][k]['us']:.1f}/{ra['options'][k]['us']:.1f}" for k in labels)
            print(f"b={ra['batch']:2d} C={ra['context']:5d} floor {ra['floor_us']:6.1f} engine {eb:6.1f} -> {ea:6.1f} "
                  f"({ea / eb - 1:+5.1%}; splits {rb['engine_splits']} -> {ra['engine_splits']}; "
                  f"{ea / ra['floor_us']:.2f}x) | {opts}")  # fmt: skip
            if rb["engine_splits"] == ra["engine_splits"]:
                alone.append(ea / eb - 1)
        err = max(r["engine"]["rel_err"] for r in a["rows"])
        spread = f"{min(alone):+.1%} to {max(alone):+.1%}" if alone else "none"
        print(f"  rows with the same splits on both trees: {spread}; largest engine error (after) {err:.4f}")


if __name__ == "__main__":
    main()
