"""The network on whole images: any size, one after another, as inference and the service ask."""

import keras
import numpy as np

import hypermodel
from shipseg.predict import prediction


def test_a_bilinear_upsampling_unet_predicts_images_of_several_sizes_one_after_another():
    model = hypermodel.build_unet(2, 4, upsampling="resize", ship_head=True)
    for height, width in ((32, 32), (64, 96), (40, 72), (64, 96)):
        images = np.random.default_rng(height).uniform(0, 255, (2, height, width, 3))
        probabilities, ship = prediction.predict_batch(model, images.astype(np.float32))
        assert probabilities.shape == (2, height, width) and ship.shape == (2,)
        assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_flip_tta_averages_the_image_and_its_two_flips():
    model = hypermodel.build_unet(2, 4, ship_head=True)
    images = np.random.default_rng(1).uniform(0, 255, (1, 32, 64, 3)).astype(np.float32)
    plain, _ = prediction.predict_batch(model, images)
    averaged, ship = prediction.predict_batch(model, images, flip_tta=True)
    left_right, _ = prediction.predict_batch(model, images[:, :, ::-1].copy())
    up_down, _ = prediction.predict_batch(model, images[:, ::-1].copy())
    expected = (plain + left_right[:, :, ::-1] + up_down[:, ::-1]) / 3
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    assert ship.shape == (1,)


def test_the_largest_batch_is_the_largest_power_of_two_that_fits_up_to_the_limit():
    assert prediction.largest_batch(lambda size: size <= 12, limit=32) == 8
    assert prediction.largest_batch(lambda size: True, limit=32) == 32
    assert prediction.largest_batch(lambda size: False) == 1


def test_on_a_cpu_the_device_batch_is_the_cpu_batch():
    model = hypermodel.build_unet(levels=2, base_filters=4)
    assert prediction.device_batch_size(model) == prediction.CPU_BATCH
    assert prediction.device_batch_size(model, cpu_batch=8) == 8


def test_on_a_gpu_the_batch_is_half_the_largest_that_fits_its_memory(monkeypatch):
    import tensorflow as tf

    class SmallGpuModel(keras.Model):
        """Runs out of memory above 8 images of 768 x 768, as a small GPU would."""

        def predict_on_batch(self, images):
            if len(images) > 8:
                raise tf.errors.ResourceExhaustedError(None, None, "out of memory")
            return np.zeros(images.shape[:3] + (1,), np.float32)

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["gpu:0"])
    assert prediction.device_batch_size(SmallGpuModel()) == 4
