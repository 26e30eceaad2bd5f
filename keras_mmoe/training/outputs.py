"""What a finished run leaves: the chief saves the ``.keras`` file and exports the SavedModel."""

from typing import Any, Optional

from keras_mmoe.saving import load_keras_model, save_keras_model
from keras_mmoe.serving import export_for_serving
from keras_mmoe.training.loop import FitResult


def save_and_export(result: FitResult, keras_path: Optional[str] = None, export_dir: Optional[str] = None, *,
                    version: Optional[int] = None, overwrite: bool = False, delete_checkpoints: bool = True,
                    **export_kwargs: Any) -> Optional[str]:
    """On the chief: saves ``result.model`` to ``keras_path``, exports it to ``export_dir/<version>``
    (:func:`keras_mmoe.serving.export_for_serving`, which takes ``export_kwargs``), then removes
    the run's checkpoints. Other workers do nothing. Returns the export's version directory (None
    when not exported).

    The export is made from the saved ``.keras`` file loaded outside the strategy, so the SavedModel
    holds plain variables whatever the strategy was, and the ``.keras`` file is proven loadable.
    The checkpoints are removed last: a run killed before the export resumes with nothing left to
    train and exports then; no version exists before training has completed. An existing
    ``keras_path`` is replaced only with ``overwrite=True``, or when this run trained nothing
    because it resumed a finished run (whose killed attempt may have saved it already).
    """
    if not result.distribution.is_chief:
        return None
    model = result.model
    if keras_path is not None:
        finished_before = result.resumed_from is not None and result.steps_this_run == 0
        save_keras_model(model, keras_path, overwrite=overwrite or finished_before)
        if export_dir is not None:
            model = load_keras_model(keras_path)
    version_dir = None
    if export_dir is not None:
        version_dir = export_for_serving(model, export_dir, version=version, overwrite=overwrite, **export_kwargs)
    if delete_checkpoints and result.checkpoint is not None:
        result.checkpoint.delete()
    return version_dir
