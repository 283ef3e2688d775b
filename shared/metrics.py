"""Prometheus metrics, defined once for every service (the `service` label tells them apart)."""

from prometheus_client import Counter, Gauge, Histogram

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
NOTICES_LATE = Counter(
    "huifang_notices_late_total", "Advance notices sent late, their calls re-planned to keep the lead", ["service"]
)
