"""Training one configuration: the HyperModel, per-epoch validation, the fit loop, train.py's run."""
