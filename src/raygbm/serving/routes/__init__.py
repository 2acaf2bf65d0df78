"""The endpoint's routes, one module per surface, each a ``ReplicaCore`` subclass whose methods are the
routes of its own ``APIRouter``; ``serving.app`` includes every router and makes the deployment class
from all of them (Serve binds a route to the replica when its method belongs to one of the deployment
class's bases).

- ``predict``: ``POST /predict``, ``POST /predict/batch``, ``GET /predict/batch/{id}``.
- ``feedback``: ``POST /feedback``, ``GET /feedback``.
- ``oip``: the Open Inference Protocol under ``/v2``.
- ``views``: ``GET /drift``, ``GET /retrain``, ``GET /model``, ``GET /healthz``, ``GET /readyz``.
"""
