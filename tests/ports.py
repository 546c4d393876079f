"""Ports for servers that tests start in other processes, reserved without a race.

A port found free and closed again before the server binds it can be taken in between (by the
other xdist worker's coordinator, say). Instead the test keeps the port bound, with SO_REUSEPORT,
for as long as it needs it: no other bind succeeds and the kernel hands it to no one as an
ephemeral port, while a server that binds with SO_REUSEPORT too, as gRPC does by default on Linux
(JAX's coordination service), listens on it. The reserving socket never listens, so every
connection goes to the server.
"""

import contextlib
import random
import socket
from collections.abc import Iterator


def _reserving_socket() -> socket.socket:
  reserving = socket.socket()
  reserving.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  return reserving


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
  """A port of the kernel's choosing on all interfaces, held until the block ends."""
  with _reserving_socket() as reserving:
    reserving.bind(("", 0))
    yield reserving.getsockname()[1]


@contextlib.contextmanager
def reserved_port_in(ports: range) -> Iterator[int]:
  """A port of `ports` (tried in random order), held until the block ends."""
  for port in random.sample(ports, min(len(ports), 200)):
    with _reserving_socket() as reserving:
      try:
        reserving.bind(("", port))
      except OSError:
        continue
      yield port
      return
  raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")
