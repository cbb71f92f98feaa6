"""Export for serving: a TensorFlow SavedModel and a TFLite file, and a model that reads TFLite.

Keras writes both (``Model.export`` as ``tf_saved_model`` and as ``litert``) for one image size,
with the batch left free. The size is fixed because the bilinear up-sampling of
``upsampling="resize"`` cannot be traced with an unknown height and width (Keras 3.15 raises
``OperatorNotAllowedInGraphError``), and a static shape lets TFLite plan its buffers once.
Smaller images are padded at the bottom and right (reflected, as ``prediction.pad_to_multiple``
pads to a multiple of the U-Net's stride) and the prediction cropped back.

``export.json`` beside them records what a server must repeat: the input (RGB float32 in 0-255,
the network rescales), the outputs, the post-processing tuned by ``train.py`` (pixel threshold,
smallest ship, image-level gate), the training's input settings, and the parity measured at
export against the ``.keras`` model.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from shipseg.core import atomic, runtime
from shipseg.model import unet

EXPORT_JSON = "export.json"
SAVED_MODEL = "saved_model"
TFLITE = "model.tflite"
# Airbus images are 768 x 768.
DEFAULT_IMAGE_SIZE = 768


def export_model(
    model,
    model_path: Path,
    out_dir: Path,
    image_size: int,
    config: dict,
    parity_images,
    quantized: bool = False,
) -> dict:
    """Writes ``saved_model/``, ``model.tflite`` and ``export.json`` into ``out_dir``, all or nothing.

    Args:
        model: The trained Keras U-Net.
        model_path: Its ``.keras`` file (recorded with its SHA-256).
        out_dir: The export folder; a complete earlier export there is replaced.
        image_size: Height and width of the exported input (a multiple of the U-Net's stride).
        config: The training's ``config.json`` (input settings and tuned post-processing).
        parity_images: ``(n, size, size, 3)`` float32 images to measure parity on.
        quantized: Also write the ``QUANTIZED`` TFLite files.

    Returns:
        The ``export.json`` record.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name="image")]
    with atomic.staged_folder(out_dir) as staging:
        model.export(
            staging / SAVED_MODEL, "tf_saved_model", verbose=False, input_signature=signature
        )
        write_tflite(model, staging / TFLITE, image_size)
        if quantized:
            write_quantized(staging)
        record = _record(model, model_path, image_size, config)
        record["parity_max_abs_difference"] = parity(model, staging, parity_images)
        atomic.write_json_atomically(staging / EXPORT_JSON, record)
    return record


# TFLite's post-training quantisations without calibration data, by the file each writes.
QUANTIZED = {
    "tflite_float16": "model_float16.tflite",
    "tflite_dynamic_range": "model_dynamic.tflite",
}


def write_quantized(export_dir: Path) -> dict[str, Path]:
    """Converts the export's SavedModel to the ``QUANTIZED`` TFLite files beside it.

    Float16 weights halve the file and run in float32 on a CPU; dynamic-range quantisation
    stores int8 weights and quantises activations on the fly where kernels allow it.
    """
    import tensorflow as tf

    written = {}
    for name, file_name in QUANTIZED.items():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(export_dir / SAVED_MODEL))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range by default
        if name == "tflite_float16":
            converter.target_spec.supported_types = [tf.float16]
        path = export_dir / file_name
        path.write_bytes(converter.convert())
        written[name] = path
    return written


def write_tflite(model, path: Path, image_size: int) -> Path:
    """Writes ``model`` as a float32 TFLite file for square images, any batch.

    Args:
        model: The Keras U-Net.
        path: The ``.tflite`` file to write.
        image_size: The images' side (fixed: see the module's docstring).
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name="image")]
    model.export(path, "litert", verbose=False, input_signature=signature)
    return path


def _record(model, model_path: Path, image_size: int, config: dict) -> dict:
    outputs = {"ship_probability": "(n, height, width, 1) probability that a pixel is a ship"}
    if unet.has_ship_head(model):
        outputs["has_ship"] = "(n, 1) the ship head's probability that the image holds a ship"
    training = {key: config[key] for key in ("input", "postprocess", "status") if key in config}
    return {
        **training,
        "model": str(model_path.resolve()),
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "image_size": [image_size, image_size],
        "input_format": "float32 RGB in 0-255, shape (n, height, width, 3); the network "
        "rescales. Smaller images: pad at the bottom and right (reflect), crop the output back",
        "outputs": outputs,
        "postprocess_note": "pixels >= threshold are ship; connected components under "
        "min_ship_pixels are dropped; an image keeps its ships only if has_ship >= "
        "ship_threshold (with a head) or its top pixel >= image_threshold (without); with "
        "ship_shape 'box' each ship becomes its filled oriented box, largest first, never "
        "overlapping",
        "versions": runtime.library_versions(),
    }


def parity(model, export_dir: Path, images: np.ndarray) -> dict[str, float]:
    """The largest absolute difference of each exported model's outputs from the Keras model's.

    Args:
        model: The Keras U-Net that was exported: the reference.
        export_dir: The folder holding ``saved_model/`` and ``model.tflite`` (the staging
            folder while exporting).
        images: ``(n, size, size, 3)`` float32 RGB images in 0-255, at the exported size.

    Returns:
        ``{"saved_model": difference, "tflite": difference}``: the largest absolute difference
        over every pixel and output, in probability units (0 to 1).
    """
    import tensorflow as tf

    reference = _as_dict(model.predict_on_batch(images))
    saved = tf.saved_model.load(str(export_dir / SAVED_MODEL))
    exported = {
        "saved_model": _as_dict(saved.serve(images)),
        "tflite": _as_dict(TFLiteModel(export_dir / TFLITE).predict_on_batch(images)),
    }
    return {
        name: max(
            float(np.abs(np.asarray(outputs[key]) - np.asarray(reference[key])).max())
            for key in reference
        )
        for name, outputs in exported.items()
    }


def _as_dict(output) -> dict:
    return dict(output) if isinstance(output, dict) else {"ship_probability": output}


class TFLiteModel:
    """A TFLite U-Net behind the ``predict_on_batch`` that the scoring path calls.

    Returns what the Keras model returns: the pixel probabilities, or with a ship head a dict
    of ``ship_probability`` and ``has_ship``.

    Args:
        path: The ``model.tflite`` written by ``export_model``.
    """

    def __init__(self, path: Path):
        import tensorflow as tf

        with warnings.catch_warnings():
            # tf.lite.Interpreter is deprecated for ai-edge-litert's, but is the same code and
            # still ships with TensorFlow 2.21: one dependency fewer.
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = tf.lite.Interpreter(
                model_path=str(path), num_threads=runtime.usable_cores()
            )
        self.runner = self.interpreter.get_signature_runner()
        details = self.runner.get_input_details()
        self.input_name, spec = next(iter(details.items()))
        self.height, self.width = (int(side) for side in spec["shape"][1:3])
        self.has_ship_head = "has_ship" in self.runner.get_output_details()

    def predict_on_batch(self, images: np.ndarray):
        """Probabilities for ``(n, h, w, 3)`` images no larger than the exported size."""
        padded, (height, width) = pad_to_size(images, self.height, self.width)
        outputs = self.runner(**{self.input_name: padded})
        pixels = outputs.get("ship_probability", next(iter(outputs.values())))[:, :height, :width]
        if self.has_ship_head:
            return {"ship_probability": pixels, "has_ship": outputs["has_ship"]}
        return pixels


def pad_to_size(images: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple]:
    """Images padded to an exported model's fixed size, and their own ``(height, width)``.

    Reflected at the bottom and right as ``prediction.pad_to_multiple`` does, where it can be.

    Args:
        images: ``(n, h, w, 3)`` float32 images.
        height: The exported input's height.
        width: The exported input's width.

    Raises:
        ValueError: For images larger than the exported size.
    """
    own_height, own_width = images.shape[1:3]
    if own_height > height or own_width > width:
        raise ValueError(
            f"an image of {own_width} x {own_height} is larger than the exported model's "
            f"{width} x {height}: export with a larger --image-size"
        )
    pad_h, pad_w = height - own_height, width - own_width
    mode = "reflect" if pad_h < own_height and pad_w < own_width else "constant"
    padded = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode=mode)
    return padded, (own_height, own_width)


def read_export_record(path: Path) -> dict:
    """The ``export.json`` beside an exported model, or ``{}`` without one."""
    record_path = path.parent / EXPORT_JSON
    return json.loads(record_path.read_text()) if record_path.is_file() else {}
