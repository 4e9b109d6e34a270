"""``vfinfer bench``: latency and throughput of whole cases with a JSON report."""
