"""The code of a registered model (MLflow's models from code): MLflow copies this file into the
model and runs it on loading, instead of unpickling a Python object. The class comes from the
installed ``octvideo``; its ``load_context`` reads the model's files."""

from mlflow.models import set_model

from octvideo.serving.classifier import VideoClassifier

set_model(VideoClassifier())
