"""The experiment trackers a run reports to (`report_to`): checked before training, one experiment for both engines.

The Accelerate loop reports through Accelerate's trackers (`Accelerator(log_with=...)`, `init_trackers(EXPERIMENT)`);
the Trainer through transformers' integrations (`TrainingArguments.report_to` and their callbacks), which take the
experiment's name from `TrainingArguments.project` (Trackio) or an environment variable each (`trainer_experiment`).
Either engine meets a tracker that cannot start only once training is under way (the loop drops one that is not
installed with a warning and logs nothing), so `check_trackers` asks each one first.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Sequence

from common.errors import InputError, field, first_line

# The experiment (project) both engines log a run under.
EXPERIMENT = "gptscratch"
# What the Trainer's integrations read the experiment's name from (each defaults to a name of its own); a value the
# user set is kept, as the Accelerate loop keeps MLFLOW_EXPERIMENT_NAME.
TRAINER_EXPERIMENT_VARIABLES = (
    "WANDB_PROJECT",
    "MLFLOW_EXPERIMENT_NAME",
    "COMET_PROJECT_NAME",
    "CLEARML_PROJECT",
    "SWANLAB_PROJECT",
)


def check_trackers(report_to: Sequence[str], engine: str) -> None:
    """An InputError naming the first tracker of `report_to` that `engine` ("accelerate" or "trainer") cannot report
    to: one the Trainer has no integration for, one that is not installed or does not import, one Accelerate does not
    see, MLflow without a tracking store it can use. Imports each tracker; writes nothing (MLflow aside, which creates
    its default SQLite store when it opens it)."""
    if not report_to:
        return
    from accelerate.tracking import get_available_trackers
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    available = {str(tracker) for tracker in get_available_trackers()}
    for name in report_to:
        refused = f"{field('report_to')} {name}"
        if engine == "trainer" and name not in INTEGRATION_TO_CALLBACK:
            raise InputError(
                f"{refused}: transformers' Trainer has no integration for it; use {field('engine')} accelerate, or "
                "leave it out"
            )
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise InputError(
                f"{refused}: the tracker is not installed or does not import ({first_line(error)}); install it "
                f"(pip install {name.replace('_', '-')}) or leave it out"
            ) from None
        if name not in available:
            raise InputError(f"{refused}: Accelerate does not find the tracker installed; reinstall it or leave it out")
        if name == "mlflow":
            check_mlflow_store()


def check_mlflow_store() -> None:
    """An InputError when MLflow cannot open its tracking store (MLFLOW_TRACKING_URI, by default a SQLite database in
    the working directory): a file store, which MLflow 3 refuses, or a database it has no driver for."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.search_experiments(max_results=1)
    except MlflowException as error:
        raise InputError(
            f"{field('report_to')} mlflow: MLflow cannot use its tracking store {mlflow.get_tracking_uri()} "
            f"({first_line(error)}); set MLFLOW_TRACKING_URI to a store it takes (such as sqlite:///mlflow.db with the "
            "full mlflow package installed) or leave mlflow out"
        ) from None


@contextlib.contextmanager
def trainer_experiment() -> Iterator[None]:
    """Within it, the Trainer's integrations log to EXPERIMENT, unless the environment names another experiment."""
    unset = [name for name in TRAINER_EXPERIMENT_VARIABLES if name not in os.environ]
    os.environ.update({name: EXPERIMENT for name in unset})
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)
