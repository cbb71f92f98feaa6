"""The HTTP service: the detector, micro-batching, uploads, connections, the FastAPI routes and page."""
