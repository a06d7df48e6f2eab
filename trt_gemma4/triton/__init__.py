"""Serving: the Triton model repository (package, validate), the reference engine and the server launcher."""
