"""SFKDTrainable: the Ray Tune glue over DistillRun. Everything else in trainables/ runs without Ray."""
from pathlib import Path

import ray
import torch
from ray import tune

from trainables.inputs import TrialInputs
from trainables.probe import PROBE_FILE
from trainables.run import DistillRun, as_config
from trainables.sparsity import load_sparse, save_sparse

CHECKPOINT_FILE = "student.sfkd"


class SFKDTrainable(tune.Trainable):
    """One trial: `step()` is one epoch of training plus validation."""

    def setup(self, config: dict, inputs: TrialInputs | None = None):
        """`inputs` (from `tune.with_parameters`) carries the data and teacher through Ray's object store."""
        if inputs is not None:
            self.inputs = inputs
        inputs = getattr(self, "inputs", None) or TrialInputs()
        resources = self.trial_resources.required_resources if self.trial_resources else {}
        self.resources = dict(resources)
        wants_gpu = resources.get("GPU", 0) > 0
        # A trial given a GPU share uses CUDA only when this worker can really use it.
        device = "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"
        threads = max(1, int(resources.get("CPU", 1)))
        torch.set_num_threads(threads)
        self.diverged = False
        self.gpu_ids = ray.get_gpu_ids()
        # What Ray granted this worker, which can differ from what was asked if the request was rewritten.
        self.gpu_share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
        self.node_id = ray.get_runtime_context().get_node_id()
        cfg = as_config(config)
        data, teacher_bytes = inputs.data_for(cfg), inputs.teacher_for(cfg)
        self.shipped = {"data_shipped": int(data is not None), "teacher_shipped": int(teacher_bytes is not None)}
        self.run = DistillRun(cfg, device=device, data=data, teacher_bytes=teacher_bytes)

    def reset_config(self, new_config: dict) -> bool:
        # Lets Ray reuse this worker process for the next trial instead of starting a new one.
        self.setup(new_config)
        return True

    def step(self) -> dict:
        try:
            metrics = self.run.step("val")
        except torch.cuda.OutOfMemoryError as e:
            # Say which request did not fit, so the user can lower the GPU share or the batch size.
            raise RuntimeError(f"CUDA out of memory in a trial that requested {self.resources} "
                               f"(batch_size {self.run.cfg.batch_size}, {self.run.cfg.student} + "
                               f"{self.run.cfg.teacher_arch}): {str(e).splitlines()[0]}") from None
        metrics["cuda"] = int(self.run.device.type == "cuda")
        metrics["ray_gpu_ids"] = len(self.gpu_ids)
        metrics["ray_gpu_share"] = self.gpu_share
        metrics.update(self.shipped)  # 1: came through the object store; 0: read from this node's disk
        metrics["node_id"] = self.node_id  # which Ray node ran this epoch (kept in result.json)
        self.diverged = metrics.pop("diverged")
        if self.diverged:
            # A NaN/inf loss ends the trial now. It reports the worst possible validation figures (Ray
            # requires the search metric in every result), so it can never rank as a best trial.
            worst = {"val_acc": float("-inf"), "val_acc5": float("-inf"), "val_loss": float("inf")}
            worst.update({f"best_{k}": v for k, v in worst.items()})
            return {**metrics, **worst, "status": "diverged", "done": True}
        metrics["status"] = "ok"
        metrics["done"] = self.run.epoch >= self.run.cfg.epochs
        metrics["should_checkpoint"] = True  # every healthy epoch; a diverged state is never saved
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        if self.diverged:
            return  # NaN weights are not a state anyone should resume from (Ray may still ask at the end)
        state = self.run.state_dict()
        extra = {k: v for k, v in state.items() if k not in ("student", "masks")}
        save_sparse(Path(checkpoint_dir) / CHECKPOINT_FILE, state["student"], state["masks"],
                    self.run.scheduled_density, config=self.run.cfg.to_dict(), extra=extra)
        if self.run.last_probe is not None:
            torch.save(self.run.last_probe, Path(checkpoint_dir) / PROBE_FILE)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        student, masks, meta = load_sparse(Path(checkpoint_dir) / CHECKPOINT_FILE)
        self.run.load_state_dict({"student": student, "masks": masks, **meta["extra"]})
