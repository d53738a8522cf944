"""python -m tuner.checkpoint PATH: verify a sparse checkpoint, show what it holds, export it dense or
to ONNX."""
import sys
from pathlib import Path

from trainables.sparsity import load_sparse, to_dense_state_dict
from trainables.sparsity.sparse_checkpoint import read_header
from tuner.cli import OneLineParser, output_path, run_cli


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m tuner.checkpoint", description=(
        "Verify a sparse checkpoint (sha256 and density) and print its density, nonzero parameters and size; "
        "with --dense, also write a plain dense state_dict (zeros in place) for torch.load / load_state_dict; "
        "with --onnx, the student as an ONNX file, checked by onnx.checker and run in ONNX Runtime against "
        "PyTorch."))
    p.add_argument("path", help="a student.sfkd file")
    p.add_argument("--dense", metavar="OUT", help="write the dense state_dict here")
    p.add_argument("--onnx", metavar="OUT", help="write the student as ONNX here (batch axis dynamic)")
    a = p.parse_args(argv)
    path = Path(a.path)
    dense = output_path("--dense", a.dense) if a.dense else None
    onnx_out = output_path("--onnx", a.onnx) if a.onnx else None
    header, _ = read_header(path)
    state, masks, meta = load_sparse(path)
    cfg = meta["config"]
    print(f"{path}: {cfg.get('student', '?')} at density {meta['measured_density']:.4f} "
          f"(scheduled {meta['scheduled_density']:.4f}), {header['nonzero_params']} nonzero of "
          f"{sum(m.numel() for m in masks.values())} maskable weights, {path.stat().st_size} bytes, sha256 ok")
    if dense:
        to_dense_state_dict(path, dense)
        print(f"dense state_dict -> {dense}")
    if onnx_out:
        worst = export_checked_onnx(state, meta, onnx_out)
        print(f"onnx -> {onnx_out} (ONNX Runtime's logits within {worst:.1e} of PyTorch's on 8 seeded inputs)")
    return 0


def export_checked_onnx(state: dict, meta: dict, out: Path) -> float:
    """The checkpoint's student as ONNX at its image size, verified in ONNX Runtime on 8 seeded normal
    inputs (the final run verifies its own on real test images)."""
    import torch

    from trainables.models import create_model
    from trainables.onnx_export import export_onnx, verify_onnx

    pre = meta.get("preprocessing") or {}
    size = int(pre.get("image_size") or meta["config"].get("image_size") or 32)
    classes = len(pre["classes"]) if pre.get("classes") else None
    model = create_model(meta["config"]["student"], classes or _classes_of(state))
    model.load_state_dict(state)
    export_onnx(model, out, size)
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    return verify_onnx(out, model, images)


def _classes_of(state: dict) -> int:
    """The class count a checkpoint without preprocessing implies: the rows of its last 2-D weight."""
    return int([t for k, t in state.items() if k.endswith("weight") and t.dim() == 2][-1].shape[0])


if __name__ == "__main__":
    sys.exit(run_cli(main))
