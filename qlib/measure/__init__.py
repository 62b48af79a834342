"""Measurement: what every row of the course is judged by (notebooks 00 and 07).

    latency     measure_latency, interleaved_latency, throughput      (notebook 00)
    footprint   model_size_bytes, count_parameters / nonzeros / macs, peak_memory
    metrics     classification_report, agreement                      (notebook 00)
    stats       bootstrap intervals, paired tests, McNemar, ECE, KL   (notebook 07)
    roofline    memory bandwidth, compute roof, matrix-vector points  (notebook 09)

Imports nothing above qlib._util: the core (train.evaluate) and every technique use it.
"""

from .footprint import (count_macs, count_nonzeros, count_parameters, layer_macs,
                        model_size_bytes, peak_memory)
from .latency import interleaved_latency, measure_latency, throughput
from .metrics import agreement, classification_report
from .roofline import (bytes_per_weight, matvec_cost, matvec_point, memory_bandwidth, peak_flops,
                       pinned_threads, ridge_point, roofline)

__all__ = ["measure_latency", "interleaved_latency", "throughput", "model_size_bytes",
           "count_parameters", "count_nonzeros", "count_macs", "layer_macs", "peak_memory",
           "classification_report", "agreement", "memory_bandwidth", "matvec_point",
           "matvec_cost", "peak_flops", "roofline", "ridge_point", "bytes_per_weight",
           "pinned_threads"]
