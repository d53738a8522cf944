"""python -m tuner.checkpoint PATH: verify a sparse checkpoint, show what it holds, export it dense or
to ONNX, measure its latency."""
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
        "PyTorch; with --latency, the student's (and its teacher architecture's) inference time on this machine's "
        "CPU at batch 1 and 64, in eager PyTorch and ONNX Runtime."))
    p.add_argument("path", help="a student.sfkd file")
    p.add_argument("--dense", metavar="OUT", help="write the dense state_dict here")
    p.add_argument("--onnx", metavar="OUT", help="write the student as ONNX here (batch axis dynamic)")
    p.add_argument("--latency", action="store_true",
                   help="measure median inference time per batch (warm-up, then at least --min-time s of timed calls)")
    p.add_argument("--min-time", type=float, default=1.0, metavar="S",
                   help="seconds of timed calls per measurement (default 1.0)")
    a = p.parse_args(argv)
    if not a.min_time > 0:
        p.error(f"--min-time must be > 0 seconds, got {a.min_time}")
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
    if a.latency:
        print_latency(state, meta, header, a.min_time)
    return 0


def _student_of(state: dict, meta: dict):
    """(the checkpoint's student with its weights, its image size, its class count)."""
    from trainables.models import create_model
    from trainables.sparsity.channels import fit_to_checkpoint

    pre = meta["extra"].get("preprocessing") or {}  # the run's own record (image size, classes)
    size = int(pre.get("image_size") or meta["config"].get("image_size") or 32)
    classes = len(pre["classes"]) if pre.get("classes") else _classes_of(state)
    model = fit_to_checkpoint(create_model(meta["config"]["student"], classes), state, meta["config"], size)
    model.load_state_dict(state)
    return model, size, classes


def export_checked_onnx(state: dict, meta: dict, out: Path) -> float:
    """The checkpoint's student as ONNX at its image size, verified in ONNX Runtime on 8 seeded normal
    inputs (the final run verifies its own on real test images)."""
    import torch

    from trainables.onnx_export import export_onnx, verify_onnx

    model, size, _ = _student_of(state, meta)
    export_onnx(model, out, size)
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    return verify_onnx(out, model, images)


def print_latency(state: dict, meta: dict, header: dict, min_time: float) -> None:
    """A markdown table: the student, and the dense teacher architecture it was distilled from (its
    weights do not change a dense kernel's time), per batch size and engine, with MACs."""
    from trainables.cost import count_macs, format_macs
    from trainables.latency import measure_with_onnx, threads_note
    from trainables.models import create_model

    cfg = meta["config"]
    student, size, classes = _student_of(state, meta)
    cost = meta["extra"].get("cost") or {}
    rows = [(f"student {cfg['student']} (density {header['measured_density']:.4f})", student,
             format_macs(cost.get("macs_effective"), cost.get("macs_dense")))]
    if cfg.get("teacher", "none") != "none":
        teacher = create_model(cfg["teacher_arch"], classes)
        rows.append((f"teacher {cfg['teacher_arch']} (dense)", teacher, format_macs(*[count_macs(teacher, size)[0]] * 2)))
    print(f"latency at {size} px on {threads_note()}: median per batch after 3 warm-up calls, at least {min_time:g} s "
          f"of timed calls each")
    print("| model | M MACs / image (effective / dense) | batch | PyTorch eager ms | ONNX Runtime ms |")
    print("|---|---|---|---|---|")
    for label, model, macs in rows:
        timings = measure_with_onnx(model, size, min_time=min_time)
        for batch in sorted({t.batch for t in timings}):
            by = {t.engine: t for t in timings if t.batch == batch}
            cells = [f"{by[e].median_ms:.2f}" + (f" ({by[e].per_image_ms:.3f} / image)" if batch > 1 else "")
                     for e in ("torch", "onnx")]
            print(f"| {label} | {macs} | {batch} | {cells[0]} | {cells[1]} |")
    print("An unstructured or N:M student runs at about the dense time: PyTorch and ONNX Runtime run dense kernels "
          "on a CPU, so pruned weights are multiplied as zeros (docs/sparsity.md, Latency).")


def _classes_of(state: dict) -> int:
    """The class count a checkpoint without preprocessing implies: the rows of its last 2-D weight."""
    return int([t for k, t in state.items() if k.endswith("weight") and t.dim() == 2][-1].shape[0])


if __name__ == "__main__":
    sys.exit(run_cli(main))
