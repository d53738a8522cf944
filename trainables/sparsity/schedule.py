"""Pruning schedules (docs/method.md, Pruning schedules): one-shot, iterative (the exponential decline of
Chen et al. 2021, Eq. 9) and Zhu & Gupta 2017's cubic."""
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


def schedule_fits(steps: int, interval: int, epochs: int) -> bool:
    """Whether the last of `steps` pruning steps, `interval` epochs apart, starts inside the budget."""
    return (steps - 1) * interval <= epochs - 1


def step_epochs(steps: int, interval: int, epochs: int) -> list[int]:
    """The epoch of each pruning step t = 1..k: (t - 1) * interval when the schedule fits the budget.
    When it does not, the same k steps are spread evenly over the first half of the budget (steps that
    land on one epoch merge, the lowest density winning), so the target is always reached and trained on."""
    if schedule_fits(steps, interval, epochs):
        return [(t - 1) * interval for t in range(1, steps + 1)]
    span = (epochs - 1) // 2
    return [((t - 1) * span) // max(steps - 1, 1) for t in range(1, steps + 1)]


def pruning_plan(schedule: str, target: float, steps: int, interval: int, epochs: int) -> dict[int, float]:
    """{epoch: density to prune to at the start of that epoch}, ending at `target` within `epochs`.
    The epochs after the last step are n2 fine-tuning epochs of Chen et al. 2021."""
    if schedule == "one-shot":
        return {}
    plan = {}
    for t, epoch in enumerate(step_epochs(steps, interval, epochs), start=1):
        plan[epoch] = density_at_step(t, steps, target, schedule)
    return plan
