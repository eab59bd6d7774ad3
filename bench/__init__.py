"""Benchmarks: ``python -m bench.run`` (storestream against its peers), ``bench.geo_bench``."""
