"""The PyTorchJob launcher component."""
