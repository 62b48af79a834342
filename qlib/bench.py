"""The contract's measurement names, at the path the course has always used.

``from qlib.bench import measure_latency, model_size_bytes`` is part of the course's public
contract (notebook 00), so it keeps working; the definitions live in :mod:`qlib.measure`.
``python -m qlib.bench deploy ...`` is kept as an alias of ``python -m qlib deploy ...``.
"""

from __future__ import annotations

import sys

from .measure import (count_macs, count_nonzeros, count_parameters, interleaved_latency,
                      measure_latency, model_size_bytes, peak_memory, throughput)

__all__ = ["measure_latency", "interleaved_latency", "throughput", "model_size_bytes",
           "count_parameters", "count_nonzeros", "count_macs", "peak_memory"]

if __name__ == "__main__":
    from .__main__ import main

    sys.exit(main(sys.argv[1:]))
