"""Drift monitoring: served traffic, in windows, compared against a reference profile of the training data.

The pipeline stores a reference (``reference``) in each model bundle; the endpoint's replicas send the
rows they score to one Ray actor (``actor``), off the request path. It accumulates them in windows and
scores each closed window against the reference (``windows``, with ``scoring`` and ``stats``) and
thresholds calibrated under no drift at registration (``calibration``, resolved by ``thresholds``), keeps
windows and rows on disk so they survive a restart (``window_log``), and exports the verdicts as
Prometheus metrics; ``GET /drift`` returns the windows, which ``report`` renders as an HTML page.

Importing this package or any of its modules starts nothing and imports neither Ray nor scipy: Ray
is imported when the actor is started or created, scipy when a window is scored.
"""
