"""The HTTP edge: REST and websocket handlers, the route table, the OpenAPI spec, Prometheus metrics."""
