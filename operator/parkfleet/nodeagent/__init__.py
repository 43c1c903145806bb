"""The node agent (virtual kubelet) that runs inside each gateway shard.

It registers one Node per cell the shard owns, renews their Leases, writes their
status, runs the pods bound to them as tasks on the gateway's cars, and serves
``kubectl logs`` through the kubelet API.
"""

from parkfleet.nodeagent.agent import NodeAgent, NodeAgentConfig
from parkfleet.nodeagent.kubeletapi import KubeletServer

__all__ = ["KubeletServer", "NodeAgent", "NodeAgentConfig"]
