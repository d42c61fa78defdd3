"""The node's HTTP API (Tornado). Never touches files: it hands bytes to and from litefs.db."""
