"""Processes: the listening sockets of `--workers N`, and a worker that stops with its
supervisor. One process per pod (the Kubernetes deployment) uses none of it."""
