"""The network: the U-Net, pretrained encoders, losses, the hyperparameters it is built from, its files."""
