"""The network maths: layers, their reference and fast kernels, losses, initialisation, the
optimizer and gradient checks. Imports only numpy, the standard library, cnntrain.errors and
cnntrain.constants (tests/test_layout.py holds it to that)."""
