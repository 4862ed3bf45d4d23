"""MNIST: the verified download, the IDX reader and splits, augmentation, and the
preprocessing of user images."""
