"""From a trained model to ships: probability maps, tiles, post-processing, pictures, batch inference."""
