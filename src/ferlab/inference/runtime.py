"""The engines a network runs on: PyTorch, or ONNX Runtime (fp32, or int8 from an int8 file).

Both take the one preprocessed batch that :func:`ferlab.data.transforms.preprocess` makes,
(B, 1, H, W) float32, and return logits (B, C) (ONNX Runtime: numpy arrays for numpy arrays,
tensors for tensors); TTA and softmax are shared above them
(:func:`ferlab.inference.recognizer.predict_probabilities`), so the two backends differ only
in the engine that multiplies the numbers.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferlab.data.labels import FACE_SIZE

BACKENDS = ("auto", "torch", "onnxruntime")
# the graph's input (preprocessed faces) and output (logits), by the names ONNX files carry
ONNX_INPUT, ONNX_OUTPUT = "faces", "logits"
ONNX_OPSET = 17


def cpu_limit() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup (v2) CPU quota,
    as containers and Slurm jobs set them (os.cpu_count() gives the whole machine)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(backend: str, device: torch.device, precision: str = "fp32",
                   onnx_file: bool = False) -> str:
    """The engine a model runs on: ``backend`` as asked, or for "auto" the fastest that keeps
    the model's outputs: ONNX Runtime on a CPU (same probabilities to 1e-5, measured 1.05-1.9x
    PyTorch's faces/s, README "Deploying"), PyTorch on a GPU or under bf16 autocast. An ONNX
    file runs on ONNX Runtime only."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    if onnx_file:
        if backend == "torch":
            raise ValueError("An ONNX file runs on ONNX Runtime, not PyTorch: pass "
                             "backend='onnxruntime' or 'auto', or the model's .pt/.ckpt file.")
        backend = "onnxruntime"
    elif backend == "auto":
        usable = device.type == "cpu" and precision == "fp32" and onnxruntime_available()
        backend = "onnxruntime" if usable else "torch"
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"ferlab runs ONNX Runtime on the CPU; device={str(device)!r} needs "
                             "backend='torch' (or 'auto').")
        if precision != "fp32":
            raise ValueError(f"precision={precision!r} is PyTorch's autocast; ONNX Runtime runs "
                             "the file's own precision (fp32, or int8 from ferlab.export --int8). "
                             "Pass backend='torch' for bf16.")
        if not onnxruntime_available():
            raise ValueError("backend='onnxruntime' needs the onnxruntime package: "
                             "pip install onnxruntime")
    return backend


def to_onnx(network: nn.Module) -> bytes:
    """The network (eval mode, on the CPU) as an ONNX graph with a dynamic batch dimension:
    (B, 1, FACE_SIZE, FACE_SIZE) preprocessed faces -> (B, C) logits."""
    network = network.eval().cpu()
    example = torch.zeros(1, 1, FACE_SIZE, FACE_SIZE)
    buffer = io.BytesIO()
    # The TorchScript exporter takes 0.1-0.9 s for ferlab's networks where torch.export's takes
    # 1.5-4.3 s (measured on the shipped models); both give the same graph for these plain CNNs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        torch.onnx.export(network, (example,), buffer, input_names=[ONNX_INPUT],
                          output_names=[ONNX_OUTPUT], opset_version=ONNX_OPSET,
                          dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                          dynamo=False)
    return buffer.getvalue()


class OnnxNetwork:
    """An ONNX graph on ONNX Runtime's CPU engine, called like the PyTorch network: a (B, 1, H,
    W) float tensor in, a (B, C) logits tensor out. Threads follow the process's CPU limit and
    PyTorch's thread setting (``torch.set_num_threads``, ``predict --threads``), the lower."""

    def __init__(self, model: bytes, name: str = "the ONNX model",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(cpu_limit(), torch.get_num_threads())
        options.inter_op_num_threads = 1
        # threads spin while a run lasts (its operators hand work on without sleeping: what
        # small models one face at a time gain most from) and stop when it ends, since a
        # photo's detection (OpenCV) and decoding need the cores right after (left spinning
        # after runs, 288 px photos ran end to end at 49 photos/s against 59 without spinning)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3  # errors only: ORT's warnings are about its own choices
        try:
            self.session = ort.InferenceSession(model, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own (pybind) types for every bad graph
            raise ValueError(f"{name} is not an ONNX model ONNX Runtime can run "
                             f"({type(err).__name__}: {str(err).strip()[:300]}).") from err
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [ONNX_INPUT] or outputs != [ONNX_OUTPUT]:
            raise ValueError(f"{name} takes {inputs} and gives {outputs}; a ferlab ONNX model "
                             f"takes [{ONNX_INPUT!r}] and gives [{ONNX_OUTPUT!r}] (write one with "
                             "python -m ferlab.export SOURCE model.onnx).")

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Logits (B, C) of (B, 1, H, W) float input: an array for an array (the recognizer's
        path, no tensor on the way), a tensor for a tensor (as the PyTorch network)."""
        if isinstance(x, np.ndarray):
            array = np.ascontiguousarray(x, dtype=np.float32)
            return self.session.run([ONNX_OUTPUT], {ONNX_INPUT: array})[0]
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([ONNX_OUTPUT], {ONNX_INPUT: array})[0])
