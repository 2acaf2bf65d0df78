"""Stage 5, serving: the registered model as a Ray Serve HTTP endpoint.

- ``request``: strict parsing of JSON prediction requests, and bounded body reads.
- ``tables``: Arrow IPC / CSV bodies of ``/predict/batch``.
- ``model_slot``: the model a replica serves: load, verify, switch, follow the champion alias.
- ``monitor_buffer``: scored rows on their way to the drift monitor, off the request path.
- ``batch_jobs``: Parquet datasets scored as Ray batch jobs started from the endpoint.
- ``app``: the FastAPI app and the Serve deployment, wiring the pieces above to routes.
- ``deploy``: deploy, swap models, the pinned code version, and Serve's app builder for ``serve deploy``.
"""
