"""The hyperparameter search: settings, the isolated tuner, Keras Tuner's private API, trials and report."""
