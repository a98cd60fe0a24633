"""Shipping the service: the container image (container.py) and Kubernetes (kubernetes/)."""
