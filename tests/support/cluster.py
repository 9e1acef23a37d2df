"""Multi-worker tests on one machine: loopback addresses only."""

from __future__ import annotations

import json
import socket


def free_ports(n: int) -> list[int]:
  """`n` ports free on 127.0.0.1 right now."""
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def tf_config(workers: list[str], index: int) -> str:
  """The `TF_CONFIG` of worker `index` of a cluster of `workers`."""
  return json.dumps({"cluster": {"worker": workers},
                     "task": {"type": "worker", "index": index}})
