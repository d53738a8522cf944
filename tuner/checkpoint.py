"""python -m tuner.checkpoint PATH: verify a sparse checkpoint, show what it holds, export it dense."""
import sys
from pathlib import Path

from trainables.sparsity import load_sparse, to_dense_state_dict
from trainables.sparsity.sparse_checkpoint import read_header
from tuner.cli import OneLineParser, output_path, run_cli


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m tuner.checkpoint", description=(
        "Verify a sparse checkpoint (sha256 and density) and print its density, nonzero parameters and size; "
        "with --dense, also write a plain dense state_dict (zeros in place) for torch.load / load_state_dict."))
    p.add_argument("path", help="a student.sfkd file")
    p.add_argument("--dense", metavar="OUT", help="write the dense state_dict here")
    a = p.parse_args(argv)
    path = Path(a.path)
    dense = output_path("--dense", a.dense) if a.dense else None
    header, _ = read_header(path)
    state, masks, meta = load_sparse(path)
    cfg = meta["config"]
    print(f"{path}: {cfg.get('student', '?')} at density {meta['measured_density']:.4f} "
          f"(scheduled {meta['scheduled_density']:.4f}), {header['nonzero_params']} nonzero of "
          f"{sum(m.numel() for m in masks.values())} maskable weights, {path.stat().st_size} bytes, sha256 ok")
    if dense:
        to_dense_state_dict(path, dense)
        print(f"dense state_dict -> {dense}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
