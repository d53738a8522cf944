"""Cost of mask enforcement per training step, as a percentage of the step (not a timed test).

    python benchmarks/mask_overhead.py [--arch resnet20] [--batch 64] [--steps 30] [--repeats 5]

Times SGD steps (forward, backward, step) of the same model with and without `apply_masks`,
alternating A B A B in one process, and prints the median overhead.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trainables.models import create_model
from trainables.sparsity import apply_masks, init_masks


def time_steps(model, opt, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--density", type=float, default=0.1)
    a = p.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(a.batch, 3, 32, 32), torch.randint(0, 100, (a.batch,))
    plain = create_model(a.arch, 100)
    masked = create_model(a.arch, 100)
    masked.load_state_dict(plain.state_dict())
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt_masked = torch.optim.SGD(masked.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    apply_masks(masked, init_masks(masked, a.density, "ERK"), opt_masked)
    time_steps(plain, opt_plain, x, y, 3)  # warm-up
    time_steps(masked, opt_masked, x, y, 3)
    overheads, t_plain, t_masked = [], [], []
    for _ in range(a.repeats):
        tp = time_steps(plain, opt_plain, x, y, a.steps)
        tm = time_steps(masked, opt_masked, x, y, a.steps)
        t_plain.append(tp)
        t_masked.append(tm)
        overheads.append(100.0 * (tm - tp) / tp)
    print(f"{a.arch}, batch {a.batch}, density {a.density}, {torch.get_num_threads()} threads, cpu")
    print(f"step without masks: {1000 * statistics.median(t_plain):.1f} ms")
    print(f"step with masks:    {1000 * statistics.median(t_masked):.1f} ms")
    print(f"mask enforcement overhead: {statistics.median(overheads):.2f}% of a step "
          f"(per pair: {', '.join(f'{o:.1f}' for o in overheads)})")


if __name__ == "__main__":
    main()
