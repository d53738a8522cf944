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

        state, _, meta = load_sparse(context.artifacts[CHECKPOINT_KEY])
        self.preprocessing = json.loads(Path(context.artifacts[PREPROCESSING_KEY]).read_text())
        self.model = create_model(meta["config"]["student"], len(self.preprocessing["classes"]))
        self.model.load_state_dict(state)
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.model(x).numpy()


def log_student_model(uri: str, run_id: str, checkpoint: Path, preprocessing: Path, name: str,
                      version_tags: dict) -> str:
    """Log the student as the run's MLflow model through MLflow's own `log_model` (so the UI's Models
    column and the registry link the run and the model), register it as a new version of `name`, tag
    the version, and return its number."""
    import torch

    import trainables

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):  # the final run; leaving the block marks it finished
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=str(Path(__file__).with_name("student_model_code.py")),
            registered_model_name=name,
            artifacts={CHECKPOINT_KEY: str(checkpoint), PREPROCESSING_KEY: str(preprocessing)},
            code_paths=[str(Path(trainables.__file__).parent), str(Path(__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"])
        version = str(info.registered_model_version)
        tag_version(uri, name, version, version_tags)
    return version


def tag_version(uri: str, name: str, version: str, version_tags: dict) -> None:
    client = mlflow.MlflowClient(uri)
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, str(value))
