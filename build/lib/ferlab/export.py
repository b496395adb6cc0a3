"""Export a model for inference; the format follows the output's suffix:

    python -m ferlab.export runs/vgg9_e24 model.pt                # a ferlab model file
    python -m ferlab.export model.pt model_fp16.pt --half         # stored in float16
    python -m ferlab.export default model.onnx                    # ONNX (fp32), for any runtime
    python -m ferlab.export default model_int8.onnx --int8        # int8, calibrated on FER2013

SOURCE is a shipped model's name, a model file, a .ckpt or a run directory (its last.ckpt).
``--int8`` calibrates on FER2013 training faces (``--calibration`` names the data root;
FERLAB_DATA by default), prints the PrivateTest accuracy of the fp32 and the int8 model, and
writes nothing when int8 loses more than one point (``--max-int8-drop`` changes the limit).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ferlab.data.transforms import TTA_MODES
from ferlab.inference.model_file import MAX_INT8_DROP, export_model, export_onnx

SUFFIXES = (".pt", ".onnx")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferlab.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="SOURCE",
                        help="a shipped model's name, a model file, a .ckpt or a run directory")
    parser.add_argument("output", type=Path, help="the file to write: .pt or .onnx")
    parser.add_argument("--tta", choices=TTA_MODES, default="flip",
                        help="test-time augmentation the recognizer uses by default")
    parser.add_argument("--half", action="store_true",
                        help=".pt: store the weights as float16 (half the size; loaded as float32)")
    parser.add_argument("--int8", action="store_true",
                        help=".onnx: static int8 quantisation calibrated on FER2013 training faces")
    parser.add_argument("--calibration", type=Path, metavar="DATA_ROOT",
                        help="--int8: the FER2013 data root (default: $FERLAB_DATA)")
    parser.add_argument("--max-int8-drop", type=float, default=MAX_INT8_DROP * 100,
                        metavar="POINTS", help="--int8: refuse to write a model that loses more "
                        "PrivateTest accuracy than this (default %(default)g; -1: no limit)")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing the output")
    parser.add_argument("--debug", action="store_true", help="show an error's traceback")
    args = parser.parse_args(argv)
    suffix = args.output.suffix.lower()
    if suffix not in SUFFIXES:
        parser.error(f"the output's suffix says the format: {' or '.join(SUFFIXES)}; got "
                     f"{args.output.name!r}")
    if args.half and suffix != ".pt":
        parser.error("--half stores a .pt file's weights as float16; for a smaller, faster "
                     "ONNX file use --int8")
    if (args.int8 or args.calibration) and suffix != ".onnx":
        parser.error("--int8 and --calibration write an ONNX file: name the output *.onnx")
    if args.calibration and not args.int8:
        parser.error("--calibration is for --int8")
    if args.output.exists() and args.output.resolve() == Path(args.checkpoint).resolve():
        parser.error("the output would overwrite the checkpoint")
    if args.output.exists() and not args.overwrite:
        print(f"error: {args.output} exists; pass --overwrite to replace it.", file=sys.stderr)
        return 2
    try:
        if suffix == ".pt":
            path = export_model(args.checkpoint, args.output, tta=args.tta, half=args.half)
        else:
            limit = None if args.max_int8_drop < 0 else args.max_int8_drop / 100
            done = export_onnx(args.checkpoint, args.output, tta=args.tta, int8=args.int8,
                               calibration=args.calibration, max_drop=limit)
            if done.accuracy:
                print(f"PrivateTest accuracy (tta={args.tta}, {done.faces} faces): fp32 "
                      f"{done.accuracy['fp32']:.4f}, int8 {done.accuracy['int8']:.4f}")
            path = done.path
    except (OSError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
