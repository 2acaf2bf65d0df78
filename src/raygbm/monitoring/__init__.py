"""Stage 6, monitoring: served traffic against the training reference, and the loop's data side. Below the
registry (which stores the reference profiles in each bundle) and serving (which feeds the actor);
nothing here imports either.

Drift: the pipeline stores a reference (``reference``) in each model bundle; the endpoint's replicas send
the rows they score to one Ray actor (``actor``), off the request path. It accumulates them in windows and
scores each closed window against the reference (``windows``, with ``scoring`` and ``stats``) and
thresholds calibrated under no drift at registration (``calibration``, resolved by ``thresholds``), keeps
windows and rows on disk so they survive a restart (``window_log``), and exports the verdicts as
Prometheus metrics; ``GET /drift`` returns the windows, which ``report`` renders as HTML (``svg``).

The loop's data side, in the same actor: the served rows and scores (``prediction_log``), labels joined
to them (``feedback``), the labelled store the retraining reads (``labelled``), and performance per window,
realized and estimated (``performance``). ``loop_state`` is the loop's record, written by the loop and
shown by the endpoint.

Importing this package or any of its modules starts nothing and imports neither Ray nor scipy: Ray
is imported when the actor is started or created, scipy when a window is scored.
"""
