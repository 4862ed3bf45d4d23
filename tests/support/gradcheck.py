"""The finite-difference tools live in cnntrain.nn.gradcheck (the `cnntrain gradcheck` command uses
them too); the tests import them from here as before."""

from cnntrain.nn.gradcheck import numeric_gradient, relative_error  # noqa: F401
