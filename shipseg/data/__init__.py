"""The data: the Kaggle layout, run-length encoding, synthetic data, overlap groups, splits and folds, tf.data input."""
