"""The operator: Kopf handlers per resource kind (``fleetpool.py``, later ``inferencejob.py``)."""
