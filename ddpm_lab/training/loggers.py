"""Logger classes of our own, where Lightning's need a setting to work the way the configs promise."""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.loggers import MLFlowLogger


class MLFlowFileLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` on a local file store (``tracking_uri: file:<run>/mlruns``): no server, no
    database, the run's metrics and images inside its own folder.

    MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is true (they are in maintenance mode, still
    readable by ``mlflow ui --backend-store-uri``); this logger opts in unless the user set the variable.
    """

    def __init__(self, **kwargs: Any) -> None:
        if str(kwargs.get("tracking_uri") or "").startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(**kwargs)
