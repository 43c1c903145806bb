"""The operator: Kopf handlers per resource kind (``fleetpool.py``, ``inferencejob.py``,
``admission.py``), each module's ``register(registry, state)`` adding them to the registry
``run.py`` starts Kopf with; ``state.py`` holds what they share."""
