"""qlib: the shared, tested library behind the compression course.

One module, one idea, in one-way layers: a module imports only from layers below it
(``tests/test_layering.py`` holds this, and that nothing imports another module's
``_private`` names):

    _util  _files             seeding, argument checks, the layer walk; atomic writes
    measure/  codec/          what is measured (latency, size, footprint, metrics, stats,
                              roofline) and how numbers become bytes (bits, Huffman,
                              the container format); neither needs the core
    data  models  train       the core: data sets, the course models, fit / evaluate and
    text  gpt  lm             the cached baseline; the course language model
    quant/  prune/  distill   the techniques: each imports only the layers below
    pipeline                  Deep Compression: prune -> share -> code (notebook 08)
    runtime/                  ONNX export and ONNX Runtime; registers nothing
    recipes/                  Variant, and every named recipe in one explicit list
    evaluate                  evaluate a variant the same way for every row
    report  plots  deploy     the report, its figures, the deploy benchmark (returns rows)
    bench  metrics            the contract's import paths, kept (re-exports of measure/)
    course/  __main__         checkers, widgets, student copies; the one command line:
                              python -m qlib report | list | deploy | workbook

Each function's docstring names the notebook that introduces it.
"""

from __future__ import annotations

from ._table import markdown_table
from ._util import set_seed

__version__ = "0.1.0"
__all__ = ["set_seed", "markdown_table", "__version__"]
