"""A final run's student as an MLflow model: `mlflow.pyfunc.load_model("models:/NAME/VERSION")` gives
back a model whose `predict` is the student's logits, built from the sparse checkpoint it carries.

Input: float32 images N x 3 x H x W, already normalised with the `mean`/`std` of `preprocessing.json`
(also the version's tags); output: N x classes logits. This module imports only MLflow, PyTorch and
`trainables`, which travel inside the model (`code/`), so loading it needs neither Ray nor the data.
"""
from pathlib import Path

import mlflow.pyfunc

CHECKPOINT_KEY, PREPROCESSING_KEY = "checkpoint", "preprocessing"


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


def save_student_model(folder: Path, checkpoint: Path, preprocessing: Path) -> Path:
    """Write the MLflow model folder (MLmodel, the checkpoint, the code that reads it)."""
    import torch

    import trainables

    mlflow.pyfunc.save_model(
        path=str(folder), python_model=SparseStudent(),
        artifacts={CHECKPOINT_KEY: str(checkpoint), PREPROCESSING_KEY: str(preprocessing)},
        code_paths=[str(Path(trainables.__file__).parent), str(Path(__file__).parent)],
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"])
    return Path(folder)
