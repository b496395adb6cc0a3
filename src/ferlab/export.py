"""Export a training checkpoint as a ferlab model file (weights + network config, no optimiser):

    python -m ferlab.export runs/vgg9_e24/checkpoints/epoch022-val_acc0.6486.ckpt out.pt
    python -m ferlab.export model.pt model_fp16.pt --half     # a model file, stored in float16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ferlab.data.transforms import TTA_MODES
from ferlab.inference.model_file import export_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferlab.export", description=__doc__)
    parser.add_argument("checkpoint",
                        help="a .ckpt file, a run directory (its last.ckpt) or a model file")
    parser.add_argument("output", type=Path, help="the model file to write (.pt)")
    parser.add_argument("--tta", choices=TTA_MODES, default="flip",
                        help="test-time augmentation the recognizer uses by default")
    parser.add_argument("--half", action="store_true",
                        help="store the weights as float16 (half the size; loaded as float32)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing the output")
    parser.add_argument("--debug", action="store_true", help="show an error's traceback")
    args = parser.parse_args(argv)
    if args.output.exists() and args.output.resolve() == Path(args.checkpoint).resolve():
        parser.error("the output would overwrite the checkpoint")
    if args.output.exists() and not args.overwrite:
        print(f"error: {args.output} exists; pass --overwrite to replace it.", file=sys.stderr)
        return 2
    try:
        path = export_model(args.checkpoint, args.output, tta=args.tta, half=args.half)
    except (OSError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
