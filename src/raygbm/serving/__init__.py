"""Stage 5, serving: the registered model as a Ray Serve HTTP endpoint.

- ``request``: strict parsing of JSON prediction requests, and bounded body reads.
- ``tables``: Arrow IPC / CSV bodies of ``/predict/batch``; ``feedback``: bodies of ``POST /feedback``.
- ``oip``: the Open Inference Protocol's tensors and answers.
- ``model_slot``: the model a replica serves (``ModelSpec``): load, verify, switch, follow the alias.
- ``monitor_buffer``: scored rows on their way to the monitor, off the request path.
- ``batch_jobs``: Parquet datasets scored as Ray batch jobs started from the endpoint.
- ``replica``: what every route shares; ``routes``: the routes, one module per surface.
- ``app``: the FastAPI app (token, limits, errors) and the Serve deployment made of the routes.
- ``http_guard``: Serve's proxy held to the same body limits and answers.
- ``deploy``: deploy, swap models, the pinned code version, and Serve's app builder for ``serve deploy``.
- ``client``: the one client of a running endpoint (CLI and loop).
"""
