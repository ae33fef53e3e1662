"""MLflow *model from code* entry point of the registered secondary adapter.

``posescene.serving.pyfunc.log_and_register`` logs this file (not a pickled object) as the ``python_model``:
MLflow copies it into the model's artifacts and, on load (``mlflow.pyfunc.load_model``, ``mlflow models
serve``), executes it, and the model object is the one passed to ``set_model``. Nothing is unpickled, so
loading runs only this reviewed code and the installed ``posescene`` package it imports.
"""

from mlflow.models import set_model

from posescene.serving.pyfunc import PoseSceneModel

set_model(PoseSceneModel())
