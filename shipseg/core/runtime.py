"""TensorFlow start-up and the machine: a quiet import, cores, versions, devices and precision."""

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


# Logical CPU devices to mirror over where there is no GPU: 1 (no mirroring) unless set, as
# the tests do to run the multi-GPU code path on a CPU.
CPU_REPLICAS_VARIABLE = "SHIPSEG_CPU_REPLICAS"


def configure_cpu_replicas() -> None:
    """Splits the CPU into ``SHIPSEG_CPU_REPLICAS`` logical devices, where there is no GPU.

    Must run before TensorFlow starts its devices (its first operation); later it changes
    nothing. Without the variable, or with a GPU, it does nothing.
    """
    import tensorflow as tf

    replicas = int(os.environ.get(CPU_REPLICAS_VARIABLE, "1"))
    if replicas < 2 or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    except RuntimeError:
        pass  # The devices have started: keep the ones there are.


def mirrored_strategy():
    """``tf.distribute.MirroredStrategy`` over every local GPU, the global batch split across them.

    Without a GPU it mirrors over the CPU's logical devices: one, unless
    ``SHIPSEG_CPU_REPLICAS`` asks for more (``configure_cpu_replicas``). That runs the same
    code path as several GPUs, replicas and gradient all-reduce included, on a CPU.
    """
    import tensorflow as tf

    configure_cpu_replicas()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def set_precision(mixed: bool) -> None:
    """Keras's global dtype policy: ``mixed_float16`` (float16 compute, float32 weights) or float32.

    The U-Net's outputs are float32 layers whatever the policy (``unet._mask_output``), so its
    losses and metrics are computed in float32; a model trained mixed is turned back to float32
    where it is loaded (``unet.in_float32``).
    """
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
