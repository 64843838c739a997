"""Dataset loaders: CIFAR-10/100 (in memory) and ImageNet (read from disk)."""
