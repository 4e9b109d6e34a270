"""The instance step's touch threshold swept on annotated metaphases: per value, mask AP and
how many images get exactly (and within +-1) the annotated number of objects.

    python benchmarks/touch_sweep.py SEGMODEL DATA --json benchmarks/results/NAME.json

Each value runs ``vfinfer eval-seg DATA`` on a copy of SEGMODEL whose manifest holds that
touch threshold (``export-seg --tune`` chooses by instance F1 instead).
"""

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

TOUCH_VALUES = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002)


def sweep_one(seg_model, data, touch, work):
    """eval-seg's figures of ``seg_model`` with its touch threshold set to ``touch``."""
    model = work / f"touch-{touch}"
    shutil.copytree(seg_model, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["instances"]["touch"] = touch
    (model / "manifest.json").write_text(json.dumps(manifest))
    out = work / f"touch-{touch}.json"
    subprocess.run(["vfinfer", "eval-seg", str(data), "--seg-model", str(model), "--json",
                    str(out)], capture_output=True, check=True)
    figures = json.loads(out.read_text())
    return {"touch": touch, "AP50": round(figures["AP50"], 2), "mAP": round(figures["mAP"], 2),
            "images": len(figures["per_image"]),
            "count_exact_images": sum(p["found"] == p["annotated"]
                                      for p in figures["per_image"]),
            "count_within_1_images": figures["count_within_1_images"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seg_model", type=Path)
    parser.add_argument("data", type=Path, help="a folder of labelme files")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for touch in TOUCH_VALUES:
            rows.append(sweep_one(args.seg_model, args.data, touch, Path(tmp)))
            print(rows[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": f"python benchmarks/touch_sweep.py "
                                         f"{args.seg_model} {args.data} --json {args.json}",
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
