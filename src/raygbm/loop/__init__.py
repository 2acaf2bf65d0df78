"""Stage 7, the loop's control (its data side is ``raygbm.monitoring``): the top layer under the CLI.

- ``triggers``: the controller that turns drift and realized-performance triggers into retraining jobs.
- ``jobs``: retraining submitted as a Ray Job.
- ``retrain``: one retraining run (the pipeline on source and labelled rows) and its gate on the holdout.
- ``decisions``: plain verdicts: which labelled rows are held out, promotion, rollback, performance drop.
- ``rollback``: the watch over a promotion's first labelled windows.
- ``runner``: the loop's thread beside the endpoint (reads ``GET /drift`` through ``serving.client``).
"""
