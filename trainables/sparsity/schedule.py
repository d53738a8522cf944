"""Pruning schedules of seed 001: one-shot, iterative (exponential, Eq. 9) and Zhu-Gupta cubic."""
SCHEDULES = ("one-shot", "iterative", "cubic")


def density_at_step(t: int, k: int, target: float, schedule: str) -> float:
    """Density after pruning step t of k (t = 0 is the dense start)."""
    if t <= 0:
        return 1.0
    if schedule == "one-shot" or t >= k:
        return float(target)
    if schedule == "iterative":
        return float(target) ** (t / k)
    if schedule == "cubic":
        s_f = 1.0 - float(target)
        sparsity = s_f + (0.0 - s_f) * (1.0 - t / k) ** 3
        return 1.0 - sparsity
    raise ValueError(f"unknown prune_schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


def pruning_plan(schedule: str, target: float, steps: int, interval: int) -> dict[int, float]:
    """{epoch: density to prune to at the start of that epoch}. Step t (1..k) happens at epoch
    (t - 1) * interval; the epochs after the last step are seed 001's n2 fine-tuning epochs."""
    if schedule == "one-shot":
        return {}
    return {(t - 1) * interval: density_at_step(t, steps, target, schedule) for t in range(1, steps + 1)}
