"""The network on whole images: any size, one after another, as inference and the service ask."""

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
