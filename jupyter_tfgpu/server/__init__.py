"""The server side: the app and its wiring, sampling, kernels, and the HTTP API."""
