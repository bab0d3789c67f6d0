"""The verifier tests' fixtures; they live in vlib.py, a module with a unique
name, so test files can import its helpers without clashing with another
directory's conftest."""
from vlib import daemons, helper, k, net  # noqa: F401  (pytest fixtures)
