"""Stage 7, the loop's control (its data side is ``raygbm.monitoring``): under ``raygbm.application``,
which puts it in the deployed app.

- ``triggers``: the controller that turns drift and realized-performance triggers into retraining jobs.
- ``jobs``: retraining submitted as a Ray Job.
- ``retrain``: one retraining run (the pipeline on source and labelled rows) and its gate on the holdout.
- ``decisions``: plain verdicts: which labelled rows are held out, promotion, rollback, performance drop.
- ``rollback``: the watch over a promotion's first labelled windows.
- ``runner``: the loop's thread (reads the drift monitor's report, as ``GET /drift`` shows it).
- ``service``: ``LoopController``, the Serve deployment that runs the runner inside the app.
- ``watch``: the loop's news as lines (``raygbm serve`` prints them).
"""
