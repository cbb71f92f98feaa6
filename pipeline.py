"""tf.data input: from a table of images (``shipseg.data.airbus``) to the network's batches.

Training reads random crops at full resolution (most of them holding a ship pixel), flipped
and turned; evaluation reads whole images, decoded on a few threads. How images become input
is one ``InputConfig``, recorded with every run so that training, evaluation and inference
all repeat it. The implementation is ``shipseg.data.inputs``; these are the names a user calls.

Example:
    >>> import pipeline
    >>> dataset = pipeline.training_dataset(table, pipeline.InputConfig(mode="crop", size=256), seed=0)
"""

from __future__ import annotations

from shipseg.data.inputs import (
    InputConfig,
    decode_image,
    decode_mask,
    evaluation_dataset,
    training_dataset,
)

__all__ = ["InputConfig", "decode_image", "decode_mask", "evaluation_dataset", "training_dataset"]
