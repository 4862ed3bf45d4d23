"""MNIST: the verified download (download.py and its parts), the IDX reader and splits,
augmentation, and the reading and preprocessing of user images."""
