"""A final run's student as an MLflow model: `mlflow.pyfunc.load_model("models:/NAME/VERSION")` gives
back a model whose `predict` is the student's logits, built from the sparse checkpoint it carries.

Input: float32 images N x 3 x H x W, already normalised with the `mean`/`std` of `preprocessing.json`
(also the version's tags); output: N x classes logits. This module imports only MLflow, PyTorch and
`trainables`, which travel inside the model (`code/`), so loading it needs neither Ray nor the data.
"""
from pathlib import Path

import mlflow.pyfunc

CHECKPOINT_KEY, PREPROCESSING_KEY = "checkpoint", "preprocessing"
MODEL_NAME = "model"  # the logged model's name in the run


class SparseStudent(mlflow.pyfunc.PythonModel):
    # The input is a plain float array with no typed schema to validate; without this MLflow warns at
    # import that `predict` has no type hints.
    _skip_type_hint_validation = True

    def load_context(self, context):
        import json

        from trainables.models import create_model
        from trainables.sparsity import load_sparse
        from trainables.sparsity.channels import fit_to_checkpoint

        state, _, meta = load_sparse(context.artifacts[CHECKPOINT_KEY])
        self.preprocessing = json.loads(Path(context.artifacts[PREPROCESSING_KEY]).read_text())
        model = create_model(shipped_spec(meta["config"]["student"]), len(self.preprocessing["classes"]))
        self.model = fit_to_checkpoint(model, state, meta["config"], int(self.preprocessing["image_size"]))
        self.model.load_state_dict(state)
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.model(x).numpy()


def shipped_spec(spec: str) -> str:
    """A user-code student is rebuilt from the copy of its file that travels in the model's code/ (on
    the path when MLflow loads it), not from the path it had on the machine that trained it."""
    from trainables.models.sources import user_code_file

    path = user_code_file(spec)
    return spec if path is None else f"module:{path.stem}:{spec.rpartition(':')[2]}"


def student_code_and_requirements(checkpoint: Path) -> tuple[list[str], list[str]]:
    """What the model needs beside `trainables` and this package: the user's model file for a
    module:FILE.py student, and torchvision or timm at this machine's version for their students."""
    import torch

    import trainables
    from trainables.models.sources import split_spec, user_code_file
    from trainables.sparsity import load_sparse

    config = load_sparse(checkpoint)[2]["config"]
    spec = config["student"]
    kind, _ = split_spec(spec)
    code = [str(Path(trainables.__file__).parent), str(Path(__file__).parent)]
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]
    if kind in ("torchvision", "timm"):
        import importlib

        requirements.append(f"{kind}=={importlib.import_module(kind).__version__.split('+')[0]}")
    if config.get("sparsity_pattern") == "channel":  # rebuilding the pruned student's shapes needs DepGraph
        from importlib.metadata import version  # torch_pruning.__version__ lags its release (1.6.0 in 1.6.1)

        requirements.append(f"torch-pruning=={version('torch-pruning')}")
    user_file = user_code_file(spec)
    if user_file is not None:
        code.append(str(user_file))
    return code, requirements


def log_student_model(uri: str, run_id: str, checkpoint: Path, preprocessing: Path, name: str,
                      version_tags: dict) -> str:
    """Log the student as the run's MLflow model through MLflow's own `log_model` (so the UI's Models
    column and the registry link the run and the model), register it as a new version of `name`, tag
    the version, and return its number."""
    code_paths, requirements = student_code_and_requirements(checkpoint)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):  # the final run; leaving the block marks it finished
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=str(Path(__file__).with_name("student_model_code.py")),
            registered_model_name=name,
            artifacts={CHECKPOINT_KEY: str(checkpoint), PREPROCESSING_KEY: str(preprocessing)},
            code_paths=code_paths, pip_requirements=requirements)
        version = str(info.registered_model_version)
        tag_version(uri, name, version, version_tags)
    return version


def tag_version(uri: str, name: str, version: str, version_tags: dict) -> None:
    client = mlflow.MlflowClient(uri)
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, str(value))
