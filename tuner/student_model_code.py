"""The code MLflow runs to rebuild a final run's student (MLflow's models-from-code: the model is this
file, not a pickled object; the checkpoint it reads travels as an artifact)."""
from mlflow.models import set_model

from tuner.mlflow_model import SparseStudent

set_model(SparseStudent())
