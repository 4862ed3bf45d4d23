"""The finite-difference tools live in cnntrain.gradcheck (the `cnntrain gradcheck` command uses
them too); the tests import them from here as before."""

from cnntrain.gradcheck import numeric_gradient, relative_error  # noqa: F401
