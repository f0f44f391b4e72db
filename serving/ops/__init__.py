"""Running the service: settings, logging, Prometheus metrics, and the garbage collector set
for serving."""
