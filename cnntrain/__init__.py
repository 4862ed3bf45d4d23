"""cnntrain: a readable MNIST trainer built from NumPy layers with hand-written backprop."""

__version__ = "0.1.0"
