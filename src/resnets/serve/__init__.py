"""`resnets serve`: an HTTP service around a classifier, with micro-batching, limits and metrics."""
