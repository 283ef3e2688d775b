"""Engine and unit of work for SQLite and PostgreSQL; each service in its own file or schema."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
import structlog
from aiokafka.errors import KafkaError
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from shared.crypto import Cipher

log = structlog.get_logger(__name__)

T = TypeVar("T")


# A pooled connection unused for this long is pinged at checkout; one in steady use is not (the
# idea of HikariCP's aliveBypassWindowMs): a ping at every checkout was a round trip per request.
IDLE_PING_AFTER_S = 1.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def among(
    column: sa.ColumnElement[Any], values: Iterable[Any], dialect: str, *, name: str | None = None
) -> sa.ColumnElement[bool]:
    """`column IN values`; on PostgreSQL `column = ANY(:values)`, one array parameter.

    An IN of N parameters is a new prepared statement for each N. Meant for an indexed column, where
    each value is one index probe: as a filter over many rows, PostgreSQL's generic plan would search
    the array element by element for every row (100 ms for 200 values against 10,000 rows).
    With `name`, the values are a parameter of that name, given when a statement built once is run.
    """
    values = list(values)
    if dialect != "postgresql":
        return column.in_(sa.bindparam(name, expanding=True) if name else values)
    return column == sa.any_(sa.bindparam(name, values, type_=postgresql.ARRAY(column.type)))


class AsRow(Protocol):
    """An item queued for INSERT whose values are taken when the buffer is written (later changes count)."""

    def row(self) -> dict[str, Any]: ...


class RowBuffer:
    """Rows a transaction queues, written with one statement per table: one multi-row INSERT of the
    new rows, one UPDATE by key of the changed ones (an ORM object per row costs more than its write).

    Kept in the session's `info` under its user's key while the transaction (or a batch of it) runs.
    """

    def __init__(self) -> None:
        self.inserts: dict[sa.Table, list[dict[str, Any] | AsRow]] = {}
        self.updates: dict[sa.Table, tuple[str, tuple[str, ...], dict[Any, object]]] = {}

    @classmethod
    def of(cls, session: Session, key: str) -> RowBuffer | None:
        found = session.info.get(key)
        return found if isinstance(found, RowBuffer) else None

    @classmethod
    def start(cls, session: Session, key: str) -> RowBuffer:
        buffer = session.info[key] = cls()
        return buffer

    def insert(self, table: sa.Table, row: dict[str, Any] | AsRow) -> None:
        """Queue a row: a dict as it is, or an item whose `row()` is taken at the write."""
        self.inserts.setdefault(table, []).append(row)

    def pending(self, table: sa.Table) -> list[dict[str, Any] | AsRow]:
        """The table's rows queued for INSERT, in order (a caller may drop the newest)."""
        return self.inserts.setdefault(table, [])

    def update(self, table: sa.Table, item: object, *, key: str, columns: tuple[str, ...]) -> None:
        """Write the item's `columns` (its attributes) over the row its `key` names, as they are at the write."""
        self.updates.setdefault(table, (key, columns, {}))[2][getattr(item, key)] = item

    def drain(self, dialect: str) -> list[tuple[sa.Executable, list[dict[str, Any]] | None]]:
        """The statements that write what is queued, with their parameters; the buffer is left empty."""
        done: list[tuple[sa.Executable, list[dict[str, Any]] | None]] = [
            (_insert(table), [row if isinstance(row, dict) else row.row() for row in rows])
            for table, rows in self.inserts.items()
            if rows
        ]
        for table, (key, columns, items) in self.updates.items():
            if items:
                rows = [{name: getattr(item, name) for name in columns} for item in items.values()]
                done.append(_update_by_key(table, key, rows, dialect))
        self.inserts, self.updates = {}, {}
        return done


@functools.cache
def _insert(table: sa.Table) -> sa.Insert:
    return sa.insert(table)  # built once per table: batches write at every flush and commit


def _update_by_key(
    table: sa.Table, key: str, rows: list[dict[str, Any]], dialect: str
) -> tuple[sa.Executable, list[dict[str, Any]] | None]:
    """One UPDATE of many rows by key: on PostgreSQL `UPDATE … FROM unnest(:arrays)`, a statement whose text
    does not change with the count; on SQLite (in process, no round trips) one statement executed for each."""
    names = list(rows[0])
    changed = [name for name in names if name != key]
    if dialect != "postgresql":
        by_key = sa.update(table).where(table.c[key] == sa.bindparam(f"u_{key}"))
        statement = by_key.values({name: sa.bindparam(f"u_{name}") for name in changed})
        return statement, [{f"u_{name}": value for name, value in row.items()} for row in rows]
    arrays = [
        sa.bindparam(f"u_{name}", [row[name] for row in rows], type_=postgresql.ARRAY(table.c[name].type))
        for name in names
    ]
    values = sa.func.unnest(*arrays).table_valued(*(sa.column(name) for name in names)).render_derived(name="v")
    statement = sa.update(table).where(table.c[key] == values.c[key]).values({n: values.c[n] for n in changed})
    return statement, None


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on both databases."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ENCRYPTED_PREFIX = "enc:"

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def resolve_url(database_url: str | None, data_dir: Path, service: str) -> str:
    """One SQLite file per service, or the PostgreSQL URL shared by all (schemas separate them)."""
    if not database_url:
        return f"sqlite+aiosqlite:///{data_dir / (service + '.db')}"
    if database_url.startswith("sqlite"):
        if "{service}" in database_url:
            return database_url.replace("{service}", service)
        stem, dot, suffix = database_url.rpartition(".")
        return f"{stem}-{service}.{suffix}" if dot else f"{database_url}-{service}"
    return database_url


# Alembic keeps its migration context in a module global, so migrations of services sharing a
# process (huifang run with several services) must not interleave.
_MIGRATION_LOCK = asyncio.Lock()

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def woken(signal: asyncio.Event, within: float) -> None:
    """Wait until `signal` is set or `within` seconds have passed, whichever comes first."""
    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as
    # the event is set, and then stopping the service would wait for the loop forever.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await signal.wait()


class Database:
    """Engine and session factory of one service, with the signals that wake its loops after a commit."""

    def __init__(
        self,
        url: str,
        *,
        schema: str,
        source: str,
        topic_prefix: str = "",
        cipher: Cipher | None = None,
        idle_ping_after_s: float | None = None,
    ) -> None:
        if not _SCHEMA.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self.url = url
        self.schema = schema
        self.source = source
        self.topic_prefix = topic_prefix
        self.cipher = cipher
        self.outbox_signal = asyncio.Event()
        self._signals: dict[str, asyncio.Event] = {}
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        idle = IDLE_PING_AFTER_S if idle_ping_after_s is None else idle_ping_after_s
        self.engine: AsyncEngine = _make_engine(url, schema, self.dialect, idle_ping_after_s=idle)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def uow(self) -> AsyncIterator[UnitOfWork]:
        """One transaction: rolled back unless committed."""
        # Closing the session rolls back what was not committed, and (unlike rollback) leaves
        # loaded objects readable after the block.
        async with self.sessions() as session:
            yield UnitOfWork(session, self)

    async def migrate(self, migrations: Path, *, target: str = "head") -> None:
        """Apply the service's alembic migrations (serialised across replicas on PostgreSQL)."""
        if self.dialect == "sqlite":
            Path(self.url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        async with _MIGRATION_LOCK, self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": self.schema})
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                await conn.execute(text(f'SET LOCAL search_path TO "{self.schema}"'))
            await conn.run_sync(_upgrade, str(migrations), self.cipher, target)

    def seal(self, text: str) -> str:
        """Text encrypted for rest, marked with ENCRYPTED_PREFIX so that readers know to decrypt it."""
        if self.cipher is None:
            raise RuntimeError(f"encrypting at rest in {self.schema} needs the database's cipher")
        return ENCRYPTED_PREFIX + self.cipher.encrypt(text)

    def unseal(self, stored: str) -> str:
        """Stored text in the clear: decrypted when sealed, as it is when written plain."""
        if not stored.startswith(ENCRYPTED_PREFIX):
            return stored
        if self.cipher is None:
            raise RuntimeError(f"decrypting {self.schema}'s sealed text needs the database's cipher")
        return self.cipher.decrypt(stored.removeprefix(ENCRYPTED_PREFIX))

    async def once_more_if_stale(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """`work` in a unit of work, run again in a fresh one if the database had dropped its connection.

        Optimistic disconnect handling (instead of a ping at every checkout): the failed statement
        invalidates the pool, so the second run gets a new connection. Never after a commit was
        tried, since that commit may have landed.
        """
        async with self.uow() as uow:
            try:
                return await work(uow)
            except sa.exc.DBAPIError as exc:
                if not exc.connection_invalidated or uow.commit_tried:
                    raise
        async with self.uow() as uow:
            return await work(uow)

    def signal(self, name: str) -> asyncio.Event:
        """Set when a transaction that called `uow.wake(name)` commits (here, or on another replica when listening)."""
        return self._signals.setdefault(name, asyncio.Event())

    def channel(self, name: str) -> str:
        """The PostgreSQL NOTIFY channel of `name` for this service's schema (63 characters at most)."""
        return f"huifang.{name}.{self.schema}"[:63]

    async def listen(self, *names: str, retry_seconds: float = 1.0) -> None:
        """Set `signal(name)` whenever another replica commits a wake-up for it; runs until cancelled.

        PostgreSQL LISTEN on one dedicated connection. The loops still poll: a notification missed
        while the connection is down is found by the next poll, or at once when listening resumes.
        """
        while True:
            try:
                await self._listen_until_lost(names)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("db.listen_failed", schema=self.schema, error=type(exc).__name__)
            await asyncio.sleep(retry_seconds)

    async def _listen_until_lost(self, names: tuple[str, ...]) -> None:
        by_channel = {self.channel(name): name for name in names}
        lost = asyncio.Event()

        def notified(_conn: object, _pid: int, channel: str, _payload: str) -> None:
            self.signal(by_channel[channel]).set()

        async with self.engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            raw.add_termination_listener(lambda _conn: lost.set())
            for channel in by_channel:
                await raw.add_listener(channel, notified)
            for name in names:
                self.signal(name).set()  # what was committed while no one listened
            try:
                await lost.wait()
            finally:
                if not raw.is_closed():
                    for channel in by_channel:
                        await raw.remove_listener(channel, notified)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def _make_engine(url: str, schema: str, dialect: str, *, idle_ping_after_s: float) -> AsyncEngine:
    if dialect == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy drive transactions; WAL lets readers run beside the writer.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Take the write lock up front so read-then-write transactions cannot interleave.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    engine = create_async_engine(
        url,
        pool_size=10,
        max_overflow=10,
        connect_args={"server_settings": {"search_path": schema, "application_name": f"huifang-{schema}"}},
    )
    _ping_when_idle(engine, idle_ping_after_s)
    return engine


def _ping_when_idle(engine: AsyncEngine, after_s: float) -> None:
    dialect = engine.sync_engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < after_s:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool drops this connection and checks out a fresh one.
            raise sa.exc.DisconnectionError("pooled connection was closed") from exc


def insert_new(table: sa.Table, dialect: str) -> Any:
    """INSERT … ON CONFLICT DO NOTHING on either database: a row whose key exists is left as it is."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()


def _upgrade(sync_conn: sa.Connection, script_location: str, cipher: Cipher | None, target: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.attributes["connection"] = sync_conn
    cfg.attributes["cipher"] = cipher  # for data migrations of encrypted or indexed columns
    command.upgrade(cfg, target)


def run_migrations(context: Any) -> None:
    """Body of every service's alembic env.py: migrate on the connection handed in."""
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


class UnitOfWork:
    """One transaction: state changes, dedupe rows and outbox rows (outbox.enqueue) commit together."""

    def __init__(self, session: AsyncSession, db: Database) -> None:
        self.session = session
        self.db = db
        self.committed = False
        self.commit_tried = False  # a commit that fails may still have landed: never run the work again
        self.emitted = 0  # outbox rows added (outbox.enqueue): commit wakes the relay when there are any
        self.wakes: set[str] = set()
        self._connection: AsyncConnection | None = None

    def wake(self, name: str) -> None:
        """Once this transaction commits, wake the loops waiting on `name`: here, and other replicas on PostgreSQL."""
        self.wakes.add(name)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    async def execute(self, statement: sa.Executable, params: Mapping[str, Any] | None = None) -> sa.CursorResult[Any]:
        """A Core statement on the transaction's connection: for hot paths, without the ORM session's per-call work."""
        if self._connection is None or self._connection.closed:  # closed: the transaction it served ended
            self._connection = await self.session.connection()
        return await self._connection.execute(statement, params)

    async def commit(self) -> None:
        if self.wakes and self.dialect == "postgresql":
            # NOTIFY inside the transaction: PostgreSQL sends it on commit, and never for a rollback.
            channels = sorted(self.db.channel(name) for name in self.wakes)
            await self.session.execute(
                text("SELECT pg_notify(c, '') FROM unnest(CAST(:channels AS text[])) AS c"), {"channels": channels}
            )
        self.commit_tried = True
        await self.session.commit()
        self.committed = True
        if self.emitted:
            self.db.outbox_signal.set()
        for name in self.wakes:
            self.db.signal(name).set()
        self.wakes.clear()

    async def rollback(self) -> None:
        await self.session.rollback()


# SQLSTATEs that clear up on their own: connection (08), rollback/serialization/deadlock (40),
# resources (53), operator intervention/shutdown (57), lock not available, read-only after failover.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")
_TRANSIENT_SQLSTATES = ("55P03", "25006")


def is_transient(exc: BaseException) -> bool:
    """Errors that mean 'try again later', not 'this message (or request) is bad'."""
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            return True
        state = _sqlstate(exc.orig)
        return bool(state) and (state[:2] in _TRANSIENT_SQLSTATE_CLASSES or state in _TRANSIENT_SQLSTATES)
    return isinstance(exc, OSError | ConnectionError | KafkaError | TimeoutError | sa.exc.TimeoutError)


def _sqlstate(error: BaseException | None) -> str:
    for candidate in (error, getattr(error, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return ""
