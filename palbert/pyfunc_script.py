"""What MLflow runs to build palbert's pyfunc when it loads a logged model (a model from code, no pickle)."""

from mlflow.models import set_model

from palbert.mlflow_model import PalbertPyfunc

set_model(PalbertPyfunc())
