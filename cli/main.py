"""The `huifang` command: run services, the local broker, topics, the dead-letter tools, the demo."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="Huifang (回访): verification callbacks for mortgage lending.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect and replay dead-letter topics.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
app.add_typer(topics_app, name="topics")
SERVICES = ("scheduler", "outcomes", "notifier")
DEMO_LOANS, DEMO_SECONDS = 80, 60.0


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"huifang: {exc}", err=True)
        raise typer.Exit(2) from None


def _services(named: list[str] | None) -> list[str]:
    """The services named on the command line (all when none), or exit 2 naming an unknown one."""
    chosen = named or list(SERVICES)
    unknown = sorted(set(chosen) - set(SERVICES))
    if unknown:
        typer.echo(f"huifang: unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}", err=True)
        raise typer.Exit(2)
    return chosen


def _app_factory(service: str) -> Any:
    if service == "scheduler":
        from services.scheduler.app import create_app
    elif service == "outcomes":
        from services.outcomes.app import create_app
    else:
        from services.notifier.app import create_app
    return create_app


def server_config(web: Any, *, service: str, settings: Settings) -> Any:
    """The uvicorn config of one service: X-Forwarded-* trusted only from HUIFANG_FORWARDED_ALLOW_IPS."""
    import uvicorn

    return uvicorn.Config(
        web,
        host=settings.huifang_host,
        port=settings.port_of(service),
        log_level="warning",
        lifespan="on",
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.huifang_forwarded_allow_ips,
    )


async def serve(services: list[str], settings: Settings) -> None:
    """Run the services' HTTP servers in one process until SIGINT/SIGTERM, then drain and exit."""
    import uvicorn

    from shared.logs import configure_logging
    from shared.policy import PolicyError
    from shared.tracing import setup_tracing, shutdown_tracing

    configure_logging(log_format=settings.huifang_log_format)
    setup_tracing(service_name="huifang" if len(services) > 1 else f"huifang-{services[0]}")
    servers = []
    for service in services:
        try:
            web = _app_factory(service)(settings)
        except PolicyError as exc:
            typer.echo(f"huifang: {exc}", err=True)
            raise typer.Exit(2) from None
        server = uvicorn.Server(server_config(web, service=service, settings=settings))
        server.capture_signals = contextlib.nullcontext  # type: ignore[assignment,method-assign]
        servers.append(server)
    # What start-up made (modules, apps, the policy) lives as long as the process: out of the
    # collector's sight, a full collection no longer walks it (120 ms pauses under load before).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    try:
        await asyncio.gather(*tasks)
    finally:
        shutdown_tracing()
    if any(not s.started for s in servers):
        raise typer.Exit(1)


@app.command()
def run(services: Annotated[list[str] | None, typer.Argument(help="scheduler, outcomes, notifier")] = None) -> None:
    """Run the named services (all three when none is named) in the foreground."""
    chosen = _services(services)
    asyncio.run(serve(chosen, _settings()))


@contextlib.contextmanager
def _broker(settings: Settings) -> Iterator[str]:
    from cli.devstack import KafkaBroker

    _, _, port = settings.kafka_bootstrap_servers.split(",")[0].rpartition(":")
    broker = KafkaBroker(
        settings.huifang_data_dir / "kafka" / "node", port=int(port), data_dir=settings.huifang_data_dir
    )
    typer.echo(f"starting Apache Kafka on {broker.bootstrap} (data under {broker.home}) ...", err=True)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        typer.echo("stopping Kafka ...", err=True)
        broker.stop()


@app.command()
def broker() -> None:
    """Run the local single-node Kafka broker alone, until Ctrl-C or SIGTERM."""
    settings = _settings()
    # Blocked first, so SIGTERM (a process manager's stop) waits for sigwait like SIGINT instead of killing
    # this wrapper and leaving the broker's JVM, in its own session, running.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with _broker(settings):
        typer.echo("Kafka is up; Ctrl-C stops it.", err=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


@app.command()
def dev(
    sink: Annotated[bool, typer.Option(help="also run a local webhook receiver that prints notifications")] = True,
) -> None:
    """What `make run` does: the local broker, the topics, and all three services, until Ctrl-C."""
    settings = _settings()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with _broker(settings):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        asyncio.run(_wait_topics(settings))
        typer.echo(
            "topics ready; services on ports "
            f"{settings.huifang_scheduler_port}/{settings.huifang_outcomes_port}/{settings.huifang_notifier_port}",
            err=True,
        )

        async def both() -> None:
            sink_task = asyncio.create_task(_sink(settings)) if sink else None
            try:
                await serve(list(SERVICES), settings)
            finally:
                if sink_task:
                    sink_task.cancel()

        asyncio.run(both())


async def _wait_topics(settings: Settings) -> None:
    from shared.kafka import create_topics

    for attempt in range(60):
        try:
            await create_topics(settings)
            return
        except Exception:
            if attempt == 59:
                raise
            await asyncio.sleep(1)


async def _sink(settings: Settings) -> None:
    """A tiny webhook receiver for local runs: verifies signatures and prints what arrives."""
    from urllib.parse import urlparse

    url = settings.huifang_notify_webhook_url
    if not url:
        return
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        return
    from services.notifier.channels.webhook import verify

    secret = settings.huifang_webhook_secret.get_secret_value() if settings.huifang_webhook_secret else ""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:] if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        ok = verify(
            secret,
            headers.get("x-huifang-id", ""),
            int(headers.get("x-huifang-timestamp", "0") or 0),
            body,
            headers.get("x-huifang-signature", ""),
        )
        path = head.decode("latin-1").split(" ", 2)[1] if b" " in head else "?"
        shown = body.decode() if path.startswith("/hooks") and "sms" not in path else "(SMS to a party: not shown)"
        typer.echo(f"[{path} {'signature ok' if ok else 'BAD SIGNATURE'}] {shown}", err=True)
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, parsed.hostname, parsed.port or 80)
    async with server:
        await server.serve_forever()


@topics_app.command("create")
def topics_create() -> None:
    """Create the contract's topics and their dead-letter topics (existing ones are left alone)."""
    from shared.kafka import create_topics

    created = asyncio.run(create_topics(_settings()))
    typer.echo(f"created {len(created)} topic(s)" + (": " + ", ".join(created) if created else ""))


async def _read_all(settings: Settings, topic: str) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.kafka import client_options

    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        if not parts:
            await consumer._client.force_metadata_update()
            parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        if not parts:
            return []
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records: list[Any] = []

        async def behind() -> bool:
            positions = [await consumer.position(tp) for tp in parts]
            return any(pos < ends[tp] for pos, tp in zip(positions, parts, strict=True))

        while await behind():
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def _dlq_topic(settings: Settings, topic: str) -> str:
    base = topic.removesuffix(".dlq")
    return settings.topic(base.removeprefix(settings.huifang_topic_prefix)) + ".dlq"


@dlq_app.command("list")
def dlq_list(topic: str) -> None:
    """Show the messages in TOPIC's dead-letter topic with the reason each was refused."""
    settings = _settings()
    for r in asyncio.run(_read_all(settings, _dlq_topic(settings, topic))):
        headers = {k: v.decode(errors="replace") for k, v in (r.headers or ())}
        typer.echo(
            json.dumps(
                {
                    "offset": r.offset,
                    "partition": r.partition,
                    "consumer": headers.get("dlq.consumer"),
                    "from": f"{headers.get('dlq.topic')}[{headers.get('dlq.partition')}]@{headers.get('dlq.offset')}",
                    "error": headers.get("dlq.error"),
                    "bytes": len(r.value or b""),
                },
                ensure_ascii=False,
            )
        )


@dlq_app.command("replay")
def dlq_replay(topic: str) -> None:
    """Publish every message of TOPIC's dead-letter topic back to the topic it came from."""
    settings = _settings()

    async def go() -> int:
        from shared.kafka import make_producer

        records = await _read_all(settings, _dlq_topic(settings, topic))
        producer = make_producer(settings)
        await producer.start()
        try:
            for r in records:
                headers = [(k, v) for k, v in (r.headers or ()) if not k.startswith("dlq.")]
                origin = dict(r.headers or ()).get("dlq.topic", b"").decode() or settings.topic(topic)
                await producer.send_and_wait(origin, value=r.value, key=r.key, headers=headers)
        finally:
            await producer.stop()
        return len(records)

    typer.echo(f"replayed {asyncio.run(go())} message(s); consumers skip any event id they already handled")


@app.command()
def demo(
    loans: Annotated[int, typer.Option(min=1, max=10_000, help="how many loans to publish")] = DEMO_LOANS,
    agents: Annotated[bool, typer.Option(help="play agents answering due calls over HTTP")] = True,
    api_key: Annotated[str | None, typer.Option(envvar="HUIFANG_DEMO_API_KEY", help="an agent key")] = None,
    seconds: Annotated[float, typer.Option(help="how long agents keep answering")] = DEMO_SECONDS,
    experiment: Annotated[
        bool,
        typer.Option(
            help="run the policy's caller-code experiment (policy.demo.toml, as `make run` uses): parties with a "
            "code refuse less, a simulated effect; 450 loans over 240 s unless --loans/--seconds say otherwise"
        ),
    ] = False,
) -> None:
    """Publish a realistic stream of loan events and play agents answering them."""
    from cli.demo import run_demo, running_experiment

    settings = _settings()
    if settings.huifang_env == "production":
        # The demo makes up valid-looking mobile numbers: never to be loaded into a bank's real system.
        typer.echo("huifang: demo refuses to run with HUIFANG_ENV=production", err=True)
        raise typer.Exit(2)
    running = None
    if experiment:
        if not api_key:
            typer.echo("huifang: demo --experiment needs an agent key (--api-key or HUIFANG_DEMO_API_KEY)", err=True)
            raise typer.Exit(2)
        running = asyncio.run(running_experiment(settings, api_key))
        if running is None:
            typer.echo(
                "huifang: the running policy has no caller-code experiment (arms that differ in caller_code); "
                "start the stack with `make run`, which uses policy.demo.toml, or set HUIFANG_POLICY_FILE to it",
                err=True,
            )
            raise typer.Exit(2)
        # Enough answered calls per arm for the panel to call a difference of this size.
        loans, seconds = (450 if loans == DEMO_LOANS else loans), (240.0 if seconds == DEMO_SECONDS else seconds)
    asyncio.run(run_demo(settings, loans=loans, agents=agents, api_key=api_key, seconds=seconds, experiment=running))


@app.command()
def rekey(services: Annotated[list[str] | None, typer.Argument(help="scheduler, outcomes, notifier")] = None) -> None:
    """Re-encrypt every stored personal field with the newest HUIFANG_ENCRYPTION_KEY entry (live, repeatable)."""
    chosen = _services(services)
    settings = _settings()
    from cli.rekey import rekey_all

    tally = asyncio.run(rekey_all(settings=settings, services=chosen))
    for service in chosen:
        typer.echo(
            f"{service}: {tally.rotated.get(service, 0)} values re-encrypted, "
            f"{tally.unreadable.get(service, 0)} unreadable with the configured keys"
        )
    if tally.unreadable:
        raise typer.Exit(1)


@app.command()
def keygen() -> None:
    """Print a new key for HUIFANG_ENCRYPTION_KEY (comma-join keys to rotate: the first encrypts)."""
    from shared.crypto import generate_key

    typer.echo(generate_key())


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="directory for the JSON Schema files")] = Path("docs/schemas"),
    asyncapi: Annotated[Path, typer.Option(help="where the AsyncAPI 3.0 document goes")] = Path("docs/asyncapi.yaml"),
) -> None:
    """Write the JSON Schema of every event and the AsyncAPI 3.0 document of every topic, from the models."""
    from cli.asyncapi import asyncapi_yaml
    from shared.events import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.json").write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
    typer.echo(f"wrote {len(json_schemas())} schemas to {out}")
    asyncapi.parent.mkdir(parents=True, exist_ok=True)
    asyncapi.write_text(asyncapi_yaml())
    typer.echo(f"wrote {asyncapi}")


def main() -> None:
    try:
        app()
    except SettingsError as exc:
        typer.echo(f"huifang: {exc}", err=True)
        sys.exit(2)
