"""raygbm: Parquet shards to a tuned LightGBM model and a monitored endpoint, on Ray.

Importing raygbm does nothing but define names: no Ray, no I/O, no logging set-up.
"""

__version__ = "0.1.0"
