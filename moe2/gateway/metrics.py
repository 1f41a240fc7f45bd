"""The gateway's Prometheus metrics, in a registry of its own (served on ``/metrics``, and on
``--metrics-listen`` when given): requests by endpoint and status code, their latency, the
time to the first streamed token, tokens in answers, and requests in flight."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "moe2_gateway_requests",
            "HTTP requests, by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "moe2_gateway_request_seconds",
            "Request to the last byte of the response",
            ["endpoint", "stream"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.first_token = Histogram(
            "moe2_gateway_time_to_first_token_seconds",
            "Request to the first streamed token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.tokens = Counter(
            "moe2_gateway_tokens", "Tokens in answers, by kind", ["kind"], registry=r
        )
        self.inflight = Gauge("moe2_gateway_inflight", "Requests being answered", registry=r)

    def count_tokens(self, usage: dict[str, int]) -> None:
        """The tokens of one answer (OpenAI's ``usage``)."""
        self.tokens.labels("prompt").inc(usage["prompt_tokens"])
        self.tokens.labels("completion").inc(usage["completion_tokens"])
