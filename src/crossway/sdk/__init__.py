"""The Python SDK: register, discover, call, configure and coordinate from inside a service."""
