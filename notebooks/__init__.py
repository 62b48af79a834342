"""Makes notebooks/ a package, so that pytest imports notebooks/conftest.py as
``notebooks.conftest``: with ``--doctest-modules`` a second top-level ``conftest`` module
(tests/conftest.py) would otherwise clash with it at collection."""
