"""Draw docs/speed_accuracy.png: PrivateTest accuracy against faces/s classified one face at a
time, for every shipped model on every engine, with and without flip TTA, for a candidate the
benchmark ran beside them (``--extra``, labelled not shipped), and for `fer`, from
``experiments/benchmark_inference.py``'s record (one run on one machine); the models no other
row beats on both speed and accuracy are joined into the curve.

    python tools/speed_accuracy.py [--record experiments/deployment/benchmark.json] \
        [--out docs/speed_accuracy.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ferlab.artifacts import SHIPPED_ENSEMBLES, SHIPPED_MODELS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def frontier(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both faces/s and accuracy, fastest first."""
    best = [r for r in rows if not any(
        o["faces_s_batch1"] >= r["faces_s_batch1"] and o["acc"] >= r["acc"]
        and (o["faces_s_batch1"], o["acc"]) != (r["faces_s_batch1"], r["acc"]) for o in rows)]
    return sorted(best, key=lambda r: -r["faces_s_batch1"])


def label(row: dict) -> str:
    if row["model"] == "fer":
        return "fer (TFLite int8)"
    engine = row["engine"].replace("ONNX Runtime ", "ORT ").replace("PyTorch ", "torch ")
    shipped = row["model"] in SHIPPED_MODELS or row["model"] in SHIPPED_ENSEMBLES
    return (f"{row['model']}{'' if shipped else ' (not shipped)'} {engine}"
            + (", flip" if row["tta"] == "flip" else ""))


COLOURS = {"default": "C0", "cpu-trained": "C1", "ensemble": "C2", "fer": "C3", "fast": "C4"}
MARKERS = {"PyTorch fp32": "x", "ONNX Runtime fp32": "o", "ONNX Runtime int8": "s",
           "TFLite int8": "*"}


def draw(record: dict, out: Path) -> list[dict]:
    """The figure: a colour per model, a marker per engine, filled with flip TTA; the curve's
    points and fer labelled."""
    from matplotlib.lines import Line2D

    rows = record["classification"]
    best = frontier(rows)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for row in rows:
        colour = COLOURS.get(row["model"], "C4")
        marker = MARKERS.get(row["engine"], "D")
        filled = row["tta"] == "flip" or marker in ("x", "*")
        ax.scatter(row["faces_s_batch1"], row["acc"], s=60 if marker == "*" else 36, zorder=3,
                   marker=marker, color=colour, facecolors=colour if filled else "none")
        if row in best or row["model"] == "fer":
            ax.annotate(label(row), (row["faces_s_batch1"], row["acc"]), fontsize=7,
                        xytext=(5, 4), textcoords="offset points")
    ax.plot([r["faces_s_batch1"] for r in best], [r["acc"] for r in best], color="grey",
            alpha=0.6, zorder=2)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=m)
               for m, c in COLOURS.items() if any(r["model"] == m for r in rows)]
    handles += [Line2D([], [], color="black", marker=k, linestyle="", fillstyle="none"
                       if k in ("o", "s") else "full", label=e)
                for e, k in MARKERS.items() if any(r["engine"] == e for r in rows)]
    handles += [Line2D([], [], color="grey", label="no other row both faster and more accurate"),
                Line2D([], [], color="black", marker="o", linestyle="", label="filled: flip TTA")]
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("faces/s, one face at a time (log scale)")
    ax.set_ylabel("PrivateTest accuracy")
    ax.set_title(f"Speed and accuracy on {record.get('cores', '?')} CPU cores "
                 f"({record.get('date', '')}, experiments/benchmark_inference.py)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path,
                        default=ROOT / "experiments/deployment/benchmark.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/speed_accuracy.png")
    args = parser.parse_args()
    best = draw(json.loads(args.record.read_text()), args.out)
    print(f"wrote {args.out}; the curve: " + ", ".join(
        f"{label(r)} {r['acc']:.4f} at {r['faces_s_batch1']:.0f} faces/s" for r in best))


if __name__ == "__main__":
    main()
