"""A student out of PyTorch: ONNX export with torch.onnx, checked by onnx.checker, and verified by running
the file in ONNX Runtime against PyTorch on the same images (docs/sparsity.md, "ONNX").

The exported graph is the dense form: pruned weights are zeros in ordinary initialisers, so any ONNX
runtime runs it (at the dense cost, as PyTorch does)."""
import copy
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

OPSET = 17
INPUT, OUTPUT = "images", "logits"
ATOL = 1e-4  # the largest |logit difference| an export may show against PyTorch


class OnnxMismatch(RuntimeError):
    """The exported file does not compute what the PyTorch model computes."""


def export_onnx(model: nn.Module, path, image_size: int) -> Path:
    """Write `model` (in eval mode) to `path` with a dynamic batch axis, and check the file's structure
    with onnx.checker. torch.onnx's TorchScript exporter (dynamo=False): the dynamo exporter needs
    onnxscript, which this tool does not otherwise depend on."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros(2, 3, image_size, image_size, device=device)
    tmp = path.with_name(path.name + ".tmp")
    try:
        # The tracer warns on the zoo models' `return_features` branch; the export traces the default
        # (logits only), and verify_onnx checks what the file computes against the model itself.
        with torch.no_grad(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)
        onnx.checker.check_model(onnx.load(str(tmp)))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return path


def onnx_logits(path, images: torch.Tensor) -> np.ndarray:
    """The file's logits for normalised N x 3 x H x W images, on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: images.detach().cpu().float().numpy()})[0]


def verify_onnx(path, model: nn.Module, images: torch.Tensor, atol: float = ATOL) -> float:
    """The largest |logit difference| between the file in ONNX Runtime and `model` in PyTorch on
    `images`; OnnxMismatch above `atol`."""
    reference = copy.deepcopy(model).eval().cpu()  # the caller's model stays where and as it was
    with torch.no_grad():
        expected = reference(images.cpu().float()).numpy()
    worst = float(np.abs(onnx_logits(path, images) - expected).max())
    if not worst <= atol:  # also catches nan
        raise OnnxMismatch(f"{path}: ONNX Runtime's logits differ from PyTorch's by {worst:.3g} (> {atol:g})")
    return worst
