"""Finding and loading a trained model: the ``.keras`` file ``train.py`` wrote, or a TFLite export.

Shared by ``inference.py``, ``export.py`` and the service. A model that cannot be used is a one-line
``UserError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

from shipseg.core.errors import UserError
from shipseg.model import exporting, unet


def find_model(results_dir: Path, model: str | None) -> Path:
    """The given model file, or the most recently trained ``results/*/final/model.keras``."""
    if model:
        path = Path(model)
        if not path.is_file():
            raise UserError(f"{path}: model file not found")
        return path
    trained = sorted(results_dir.glob("*/final/model.keras"), key=lambda p: p.stat().st_mtime)
    if not trained:
        raise UserError(
            f"{results_dir}: no trained model found; run python train.py --best first, "
            "or pass --model"
        )
    return trained[-1]


def project_folder(model_path: Path) -> Path:
    """``results/<project>`` for a model in its ``final/`` folder, else the model's folder."""
    return model_path.parent.parent if model_path.parent.name == "final" else model_path.parent


def load_model(path: Path):
    """Loads a U-Net saved by ``train.py`` (or ``export.py``'s TFLite file) and checks it.

    The check: it maps RGB images to one channel (and, with a ship head, an image probability).
    """
    if path.suffix == ".tflite":
        try:
            return exporting.TFLiteModel(path)
        except (ValueError, RuntimeError, StopIteration) as error:
            raise UserError(f"{path}: cannot load the TFLite model ({error})") from None
    import keras

    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # Keras raises many types for a bad or foreign file.
        raise UserError(
            f"{path}: cannot load the model ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})"
        ) from None
    model = unet.in_float32(model)  # Trained with --mixed-precision: predict in float32.
    # A model with a ship head returns {"ship_probability": mask, "has_ship": probability}.
    output = model.output["ship_probability"] if unet.has_ship_head(model) else model.outputs[0]
    if (
        len(model.inputs) != 1
        or model.inputs[0].shape[-1] != 3
        or len(output.shape) != 4
        or output.shape[-1] != 1
    ):
        raise UserError(
            f"{path}: not a ship U-Net (expects one RGB input and one mask output, "
            f"got {model.inputs[0].shape} -> {output.shape})"
        )
    return model
