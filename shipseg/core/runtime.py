"""TensorFlow start-up and the machine: a quiet import, the usable cores, library versions."""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up banner (CPU features, oneDNN) silenced.

    TensorFlow prints that banner on stderr through absl before any environment variable can
    turn it off; in a command-line tool it would bury a one-line error message. If the import
    fails, stderr is restored first, so the real error is still shown.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def usable_cores() -> int:
    """The number of CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a run's results, recorded with every run."""
    import keras
    import keras_tuner
    import numpy as np
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_tuner": keras_tuner.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def hide_gpus() -> None:
    """Hides the GPUs from this process: only the trial processes train.

    Keras Tuner builds a model here while it sets up the search space; on a GPU that would
    reserve the GPU's memory for the whole search, out of reach of the trials.
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow already started here (a test or a notebook): nothing to hide any more.
