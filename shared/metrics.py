"""Prometheus metrics, defined once for every service (the `service` label tells them apart)."""

import time

from prometheus_client import Counter, Gauge, Histogram


class Every:
    """Says yes at most once per `seconds`: measurements that cost a query stay off the hot paths."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = float("-inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True


EVENTS_CONSUMED = Counter(
    "huifang_events_consumed_total", "Events handled by a consumer", ["service", "topic", "type", "result"]
)
DLQ_MESSAGES = Counter("huifang_dlq_messages_total", "Messages sent to a dead-letter topic", ["service", "topic"])
CONSUMER_BATCH_SECONDS = Histogram("huifang_consumer_batch_seconds", "Time to process one consumer batch", ["service"])
CONSUMER_UP = Gauge("huifang_consumer_up", "1 while the consumer loop runs", ["service"])
OUTBOX_PUBLISHED = Counter("huifang_outbox_published_total", "Outbox events published", ["service"])
OUTBOX_RELAY_ERRORS = Counter("huifang_outbox_relay_errors_total", "Outbox relay failures", ["service"])
TIMERS_FIRED = Counter("huifang_timers_fired_total", "Timers fired", ["service", "kind"])
TIMER_LATENESS = Histogram(
    "huifang_timer_lateness_seconds",
    "How late a timer fired after its due time",
    ["service", "kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
HTTP_REQUESTS = Counter("huifang_http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
NOTIFICATIONS = Counter("huifang_notifications_total", "Notification deliveries", ["channel", "result"])
REFUSALS = Counter("huifang_refusals_total", "Refusals recorded", ["reason"])
# For the alert rules and the board in deploy/monitoring/.
CONSUMER_LAG = Gauge(
    "huifang_consumer_lag_messages",
    "Messages of a partition not yet processed by the consumer group (last stable offset minus position)",
    ["service", "topic", "partition"],
)
OUTBOX_OLDEST_AGE = Gauge(
    "huifang_outbox_oldest_age_seconds", "Age of the oldest event waiting in the outbox (0 when empty)", ["service"]
)
ESCALATIONS_OPEN = Gauge("huifang_escalations_open", "Escalations open (not yet acknowledged), by level", ["level"])
READY = Gauge(
    "huifang_ready", "1 when the service's readiness checks pass (checked on /readyz and on each scrape)", ["service"]
)
NOTICES_LATE = Counter(
    "huifang_notices_late_total", "Advance notices sent late, their calls re-planned to keep the lead", ["service"]
)
