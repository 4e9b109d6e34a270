"""What the export checks found for exported model directories, one row per directory.

Reads each ``manifest.json`` (parity at every batch size, the FP16 graphs' agreement with FP32)
and audits the graphs again (``vfinfer_export.op_audit``), so the row also holds for model
directories exported before the audit was recorded. For the paper-size trunks:

    vfinfer export --preset paper-chrblock --random-init --out M/paper-chrblock --threads 2 --fp16
    vfinfer export --preset paper-vgg --random-init --out M/paper-vgg --threads 2 --fp16
    python benchmarks/export_checks.py M/paper-chrblock M/paper-vgg \\
        --json benchmarks/results/export_checks_paper_trunks.json

Needs the export extra (``pip install -e ".[export]"``).
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from vfinfer.model.manifest import load_manifest
from vfinfer_export.op_audit import audit_problems, op_audit


def parity_summary(parity):
    """Worst max abs error over batch sizes per output, and the lowest argmax agreement."""
    worst, agreement = {}, {}
    for role, outputs in parity["outputs"].items():
        for name, per_batch in outputs.items():
            worst[f"{role}.{name}"] = max(b["max_abs"] for b in per_batch.values())
            shares = [b["argmax_agreement"] for b in per_batch.values() if "argmax_agreement" in b]
            if shares:
                agreement[f"{role}.{name}"] = min(shares)
    return {"batches": parity["batches"], "worst_max_abs": worst,
            "min_argmax_agreement": agreement}


def graph_megabytes(model_dir, record):
    return sum((model_dir / name).stat().st_size for name in record["files"]) / 2 ** 20


def row(model_dir):
    manifest = load_manifest(model_dir)
    data, graphs = manifest.data, manifest.data["graphs"]
    audits = {role: op_audit(manifest.graph_path(role)) for role in ("gnet", "lnet", "heads")}
    fp16 = data.get("fp16_audit", {})
    return {
        "model_dir": str(model_dir), "preset": data["preset"],
        "trunk": data["config"].get("trunk", "wrn"), "source": data.get("source"),
        "graph_mb": {role: round(graph_megabytes(model_dir, record), 1)
                     for role, record in graphs.items()},
        "parity": parity_summary(data["parity"]),
        "op_audit": {"ops": sorted({op for a in audits.values() for op in a["ops"]}),
                     "problems": audit_problems(audits)},
        "fp16_agreement": fp16.get("agreement"),
        "fp16_calibration": fp16.get("calibration"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = [row(d) for d in args.model_dirs]
    args.json.write_text(json.dumps({"command": shlex.join(["python", *sys.argv]),
                                     "rows": rows}, indent=2) + "\n")
    for r in rows:
        probs = [v for k, v in r["parity"]["worst_max_abs"].items() if k.startswith("heads.")]
        agree = r["fp16_agreement"]
        fp16 = (f"FP16 type argmax agreement {agree['type_argmax_agreement']:.2%} on "
                f"{agree['images']} images" if agree else "no FP16 graphs")
        print(f"{r['preset']:16s} parity max abs (probabilities) {max(probs):.1e}, argmax "
              f"{min(r['parity']['min_argmax_agreement'].values()):.2%}; op audit "
              f"{'clean' if not r['op_audit']['problems'] else r['op_audit']['problems']}; {fp16}")


if __name__ == "__main__":
    main()
