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
