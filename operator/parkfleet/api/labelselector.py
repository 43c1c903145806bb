"""A Kubernetes LabelSelector (``matchLabels`` and ``matchExpressions``), as the API reads it.

A FleetPool's ``spec.namespaceSelector`` is one, over the labels of Namespaces: the node
agent holds every pod bound to a cell to it and the operator's webhook every InferenceJob
naming the pool. The semantics are Kubernetes' own (``metav1.LabelSelector``): every
``matchLabels`` pair and every expression must hold; an empty selector matches everything.
The CRD's schema validates the shape (operators, values); this model only reads it, and an
operator it does not know matches nothing, so an object that slipped past the schema closes
rather than opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "NAMESPACE_NAME_LABEL",
    "OPERATORS",
    "LabelSelector",
    "Requirement",
    "namespace_labels",
]

# The label the API server sets on every Namespace to its name (and keeps it so).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry.

    Attributes:
        key: The label key.
        operator: ``In``, ``NotIn``, ``Exists`` or ``DoesNotExist``.
        values: The values for ``In`` and ``NotIn`` (sorted, distinct).
    """

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement."""
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        return False  # unknown (the schema refuses it): match nothing rather than anything

    def __str__(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        op = {"In": "in", "NotIn": "notin"}.get(self.operator, self.operator)
        return f"{self.key} {op} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """A label selector: all of ``match_labels`` and all of ``match_expressions``.

    Attributes:
        match_labels: Keys that must be present with exactly these values.
        match_expressions: Requirements that must all hold.
    """

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[Requirement, ...] = ()

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> LabelSelector:
        """Reads a ``LabelSelector`` object (as a dict from the API)."""
        return cls(
            match_labels={str(k): str(v) for k, v in (obj.get("matchLabels") or {}).items()},
            match_expressions=tuple(
                Requirement(
                    key=str(e["key"]),
                    operator=str(e["operator"]),
                    values=tuple(sorted({str(v) for v in e.get("values") or ()})),
                )
                for e in obj.get("matchExpressions") or ()
            ),
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with ``labels`` is selected (an empty selector selects all)."""
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def __str__(self) -> str:
        """The selector as ``kubectl -l`` writes it (``team=a,env in (dev,prod),!old``)."""
        parts = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        parts += [str(r) for r in self.match_expressions]
        return ",".join(parts) or "(everything)"


def namespace_labels(namespace: str, labels: Mapping[str, str] | None) -> dict[str, str]:
    """A Namespace's labels as a selector sees them: with ``kubernetes.io/metadata.name``.

    The API server sets that label on every Namespace and refuses any other value for it;
    set here too, so that selecting by name never depends on where the labels came from.
    """
    return {**(labels or {}), NAMESPACE_NAME_LABEL: namespace}
