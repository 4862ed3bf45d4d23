"""The network maths: layers, their reference and fast kernels, losses, initialisation, the
optimizer and gradient checks. Imports only numpy, the standard library, cnntrain.errors and
cnntrain.constants (tests/test_layout.py holds it to that).

The layer kinds live one module per concept, each registering its classes with
cnntrain.nn.layers.register as it is imported. They are imported here, so that the registry is
complete whichever module of the package is imported first, and in this order, which is the
order of the grammar table (docs/layers.md) and of the known layers named in messages.
"""

# isort: off
from cnntrain.nn import conv, pooling, dense, activations, flatten, norm  # noqa: F401
# isort: on
