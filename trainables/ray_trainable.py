"""SFKDTrainable: the Ray Tune glue over DistillRun. Everything else in trainables/ runs without Ray."""
import copy
import posixpath
from pathlib import Path

import ray
import torch
from ray import tune

from trainables.inputs import TrialInputs
from trainables.probe import PROBE_FILE
from trainables.run import DistillRun, as_config
from trainables.sparsity import load_sparse, save_sparse
from trainables.sparsity.layers import SparsityError

CHECKPOINT_FILE = "student.sfkd"


def newest_loadable_checkpoint(missing: tune.Checkpoint) -> tune.Checkpoint | None:
    """The trial's newest checkpoint that still exists and loads, beside one that is gone.

    Ray's experiment snapshot is taken every few seconds, but a trial's checkpoints are deleted as soon as
    a newer one arrives (num_to_keep ranked by the search metric drops the previous latest at once, before
    Ray's forced snapshot). A driver killed in between leaves a snapshot naming a deleted checkpoint, and
    Ray 2.60 then fails the trial ("does not exist on storage anymore") instead of using the ones that
    remain. Every checkpoint of a trial is a state of the same seeded run, so the newest complete one is
    as good a place to resume as the one named: the epochs after it were run and logged from that very
    state, and MLflow keeps each epoch once (tuner/tracking.py). A folder whose file is missing or does
    not load (a copy cut off by the kill) is skipped."""
    import pyarrow.fs as pafs

    fs, trial_dir = missing.filesystem, posixpath.dirname(missing.path.rstrip("/"))
    try:
        entries = fs.get_file_info(pafs.FileSelector(trial_dir))
    except (OSError, FileNotFoundError):
        return None
    folders = sorted((e.path for e in entries if e.type == pafs.FileType.Directory
                      and posixpath.basename(e.path).startswith("checkpoint_")), reverse=True)
    for folder in folders:  # checkpoint_000007 before checkpoint_000006: Ray numbers them in order
        candidate = tune.Checkpoint(folder, filesystem=fs)
        try:
            with candidate.as_directory() as local:
                load_sparse(Path(local) / CHECKPOINT_FILE)
        except (OSError, SparsityError):
            continue
        return candidate
    return None


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
        # Lets Ray reuse this worker process for the next trial instead of starting a new one. The last
        # trial's run goes first: otherwise both live while the next is built, twice the GPU memory.
        self.release()
        self.setup(new_config)
        return True

    def release(self) -> None:
        """Drop this worker's run (models, optimizer, the data on its device) and hand its cached CUDA
        blocks back to the driver, so the next trial in this process, or another trial sharing the GPU,
        can have them."""
        import gc

        cuda = getattr(getattr(self, "run", None), "cuda", False)
        self.run = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # gpu_mem_peak_mb is then the next trial's own

    def cleanup(self) -> None:
        self.release()

    def step(self) -> dict:
        try:
            metrics = self.run.step("val")
        except torch.cuda.OutOfMemoryError as e:
            # Say which request did not fit, so the user can lower the GPU share or the batch size.
            raise RuntimeError(f"CUDA out of memory in a trial that requested {self.resources} "
                               f"(batch_size {self.run.cfg.batch_size}, {self.run.cfg.student} + "
                               f"{self.run.cfg.teacher_arch}): {str(e).splitlines()[0]}") from None
        metrics["cuda"] = int(self.run.device.type == "cuda")
        if self.run.cuda:  # this trial's own peak, what a GPU share must hold (benchmarks/gpu.py reads it)
            metrics["gpu_mem_peak_mb"] = torch.cuda.max_memory_allocated(self.run.device) / 2 ** 20
        metrics["ray_gpu_ids"] = len(self.gpu_ids)
        metrics["ray_gpu_share"] = self.gpu_share
        metrics.update(self.shipped)  # 1: came through the object store; 0: read from this node's disk
        metrics.update(self.run.record)  # the taps and the layers kept dense, as text: params and a tag
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
                    self.run.scheduled_density, config=self.run.cfg.to_dict(), extra=extra,
                    dense_weights=self.run.dense_weights)
        if self.run.last_probe is not None:
            torch.save(self.run.last_probe, Path(checkpoint_dir) / PROBE_FILE)

    def restore(self, checkpoint_path):
        """Ray's restore, from the trial's newest remaining checkpoint when the one Ray names is gone
        (see newest_loadable_checkpoint)."""
        ckpt = getattr(checkpoint_path, "checkpoint", None)
        if ckpt is not None and ckpt.filesystem.get_file_info(ckpt.path).type.name == "NotFound":
            replacement = newest_loadable_checkpoint(ckpt)
            if replacement is not None:
                print(f"checkpoint {ckpt.path} is gone; resuming from {replacement.path}", flush=True)
                checkpoint_path = copy.copy(checkpoint_path)  # Ray's result: its metrics, another checkpoint
                checkpoint_path.checkpoint = replacement
        return super().restore(checkpoint_path)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        student, masks, meta = load_sparse(Path(checkpoint_dir) / CHECKPOINT_FILE)
        self.run.load_state_dict({"student": student, "masks": masks, **meta["extra"]})
