"""A trainable with a simulated fault, for the failure tests. Shipped to Ray workers by value."""

from trainables import SFKDTrainable


class FlakyTrainable(SFKDTrainable):
    """Raises in epoch 2 of the trial whose lr is FAIL_LR, every time; logs each checkpoint restore."""

    FAIL_LR = 0.1
    LOG = "/tmp/sfkd-faults.log"

    def step(self):
        if self.run.cfg.lr == self.FAIL_LR and self.run.epoch == 1:
            raise RuntimeError("simulated fault in epoch 2")
        return super().step()

    def load_checkpoint(self, checkpoint_dir):
        super().load_checkpoint(checkpoint_dir)
        with open(self.LOG, "a") as f:
            f.write(f"restored lr={self.run.cfg.lr} at epoch {self.run.epoch}\n")


class GatedTrainable(SFKDTrainable):
    """Lets the first OPEN trials of a search run; every later trial parks before its first epoch until the
    process is killed. The kill test then waits on that observed state, not on a race with the search."""

    GATE = "/tmp/sfkd-gate"
    OPEN = 3

    def step(self):
        import os
        import time
        from pathlib import Path

        if self.run.epoch == 0:
            gate = Path(self.GATE)
            gate.mkdir(parents=True, exist_ok=True)
            slot = 1
            while True:  # an exclusive create numbers the trials in the order they start
                try:
                    os.close(os.open(gate / f"start{slot}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    break
                except FileExistsError:
                    slot += 1
            if slot > self.OPEN:
                (gate / f"parked{slot}").write_text(str(os.getpid()))
                while True:
                    time.sleep(1)
        return super().step()


# Ray's Tuner.restore accepts only a trainable of the same name: the resumed search runs the real one.
GatedTrainable.__name__ = GatedTrainable.__qualname__ = "SFKDTrainable"


class EpochGatedTrainable(SFKDTrainable):
    """Runs epoch e only once the number in GATE_FILE is at least e, and waits before it otherwise: the
    outage test moves the gate, so it knows which epochs ran before, during and after an outage without
    racing the trials."""

    GATE_FILE = "/tmp/sfkd-epoch-gate"

    def step(self):
        import time
        from pathlib import Path

        while True:
            try:
                allowed = int(Path(self.GATE_FILE).read_text().strip() or 0)
            except (OSError, ValueError):  # read while the test rewrites it
                allowed = 0
            if allowed > self.run.epoch:
                break
            time.sleep(0.2)
        return super().step()


EpochGatedTrainable.__name__ = EpochGatedTrainable.__qualname__ = "SFKDTrainable"
