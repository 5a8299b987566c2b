"""A tiny package whose training module the tests run with ``python -m e2e_pkg.train``."""
