"""Speed per chromosome of each trunk's presets on this CPU, through ``vfinfer bench``.

For each preset it runs ``vfinfer bench --preset P`` (an untrained model exported to a
temporary directory: speed does not depend on the weights), adds to the saved report the
exact command and the load averages before and after (the machine may be shared), and writes a
summary with GMAC and parameters per preset. Compact presets: 20 cases after the default
warm-up; paper-size ones: one case, no warm-up (``--paper-cases``).

    python benchmarks/trunk_speed.py --presets compact compact-vgg compact-chrblock \\
        paper-vgg paper-chrblock --threads 2 --summary benchmarks/results/trunk_speed.json

Needs the export extra (``pip install -e ".[export]"``).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from vfinfer.model.config import count_macs, preset
from vfinfer_export.models import VarifocalNet

RESULTS = Path(__file__).resolve().parent / "results"


def parameters(name):
    with torch.device("meta"):
        return sum(p.numel() for p in VarifocalNet(preset(name)).parameters())


def bench_one(name, args):
    paper = name.startswith("paper")
    cases = args.paper_cases if paper else args.cases
    out = RESULTS / f"bench_trunk_{name}_fp32_{args.threads}threads.json"  # never an older file
    command = ["vfinfer", "bench", "--preset", name, "--cases", str(cases),
               "--threads", str(args.threads), "--json", f"benchmarks/results/{out.name}"]
    if paper:
        command += ["--warmup", "0"]
    before = os.getloadavg()
    subprocess.run(command, check=True, cwd=RESULTS.parent.parent)
    after = os.getloadavg()
    report = json.loads(out.read_text())
    report["command"] = shlex.join(command)
    report["machine"]["load_average_1_5_15min"] = {"before": before, "after": after}
    out.write_text(json.dumps(report, indent=2) + "\n")
    stages = report["stages_ms_per_case"]
    return {
        "preset": name, "trunk": preset(name).trunk, "json": out.name,
        "gmac_per_chromosome": count_macs(preset(name)) / 1e9,
        "parameters": parameters(name), "cases": cases,
        "ms_per_chromosome": report["ms_per_image"],
        "end_to_end_ms_per_case": report["end_to_end_ms_per_case"]["median"],
        "gnet_ms_per_case": stages["gnet"]["median"], "lnet_ms_per_case": stages["lnet"]["median"],
        "heads_ms_per_case": stages["heads"]["median"],
        "achieved_gmacs": report["achieved_gmacs"],
        "pytorch_eager_speedup": report.get("speedup_vs_pytorch"),
        "load_average_before": before, "load_average_after": after,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--paper-cases", type=int, default=1)
    parser.add_argument("--summary", type=Path, required=True)
    args = parser.parse_args(argv)
    summary = {"command": shlex.join(["python", *sys.argv]), "cpu_count": os.cpu_count(),
               "rows": []}
    for name in args.presets:  # the summary is rewritten after each preset
        row = bench_one(name, args)
        summary["rows"].append(row)
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{row['preset']:18s} {row['gmac_per_chromosome']:8.3f} GMAC "
              f"{row['parameters'] / 1e6:7.1f} M params {row['ms_per_chromosome']:9.2f} ms/chrom",
              flush=True)


if __name__ == "__main__":
    main()
