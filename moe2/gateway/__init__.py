"""The OpenAI-compatible HTTP gateway: an ASGI app in front of the fleet."""
