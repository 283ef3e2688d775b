"""Which failures the consumer retries and what it says about them (pure: no broker)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from aiokafka.errors import KafkaConnectionError
from pydantic import BaseModel, ValidationError

from shared.db import is_transient
from shared.events import InvalidEvent
from shared.kafka import safe_reason


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"server said no; params ('张伟', '+8613800138000') [{sqlstate}]")
        self.sqlstate = sqlstate


def _dbapi(sqlstate: str) -> sa.exc.DBAPIError:
    return sa.exc.DBAPIError("INSERT ...", {"name": "张伟"}, _PgError(sqlstate))


@pytest.mark.parametrize("state", ["08006", "40001", "40P01", "53300", "57P01", "55P03", "25006"])
def test_postgres_states_that_clear_up_are_transient(state: str) -> None:
    assert is_transient(_dbapi(state))


@pytest.mark.parametrize("state", ["23505", "22001", "42P01"])
def test_data_errors_are_not_transient(state: str) -> None:
    assert not is_transient(_dbapi(state))


def test_connection_errors_are_transient() -> None:
    assert is_transient(KafkaConnectionError())
    assert is_transient(ConnectionRefusedError())
    assert is_transient(sa.exc.OperationalError("SELECT 1", {}, Exception("database is locked")))
    assert not is_transient(ValueError("bad"))


class _Model(BaseModel):
    phone: int


def test_safe_reason_never_carries_input_values_or_sql_parameters() -> None:
    with pytest.raises(ValidationError) as caught:
        _Model(phone="+8613800138000张伟")  # type: ignore[arg-type]
    reason = safe_reason(caught.value)
    assert "phone" in reason and "+8613800138000" not in reason and "张伟" not in reason
    assert safe_reason(_dbapi("23505")) == "DBAPIError"
    assert safe_reason(InvalidEvent("not valid JSON: x")) == "not valid JSON: x"


# --- handler tables ------------------------------------------------------------------------------


async def test_bind_gives_each_handler_the_dependencies_it_names() -> None:
    from shared.events import Event, LoanStageChanged
    from shared.kafka import bind

    seen: dict[str, object] = {}

    async def on_stage(*, uow: object, event: Event[LoanStageChanged], policy: str) -> None:
        seen.update(uow=uow, event=event, policy=policy)

    bound = bind({LoanStageChanged: on_stage}, policy="the policy", cipher="unused")
    await bound[LoanStageChanged](uow="uow", event="event")  # type: ignore[arg-type]
    assert seen == {"uow": "uow", "event": "event", "policy": "the policy"}


async def test_bind_gives_a_handlers_loader_its_dependencies_and_refuses_a_missing_one() -> None:
    from shared.events import Event, LoanStageChanged
    from shared.kafka import LOADER, batch_loader, bind

    loaded: dict[str, object] = {}

    async def load(*, uow: object, events: list[LoanStageChanged], cipher: str) -> None:
        loaded.update(uow=uow, events=events, cipher=cipher)

    @batch_loader(load)
    async def on_stage(*, uow: object, event: Event[LoanStageChanged], policy: str) -> None:
        raise AssertionError("not called here")

    bound = bind({LoanStageChanged: on_stage}, policy="the policy", cipher="the cipher")
    await getattr(bound[LoanStageChanged], LOADER)(uow="uow", events=["e1", "e2"])
    assert loaded == {"uow": "uow", "events": ["e1", "e2"], "cipher": "the cipher"}
    with pytest.raises(TypeError, match=r"load for loan.stage.changed needs cipher"):
        bind({LoanStageChanged: on_stage}, policy="the policy")


def test_bind_refuses_a_handler_whose_dependency_nobody_supplies() -> None:
    from shared.events import CallbackRefused, Event
    from shared.kafka import bind

    async def on_refused(*, uow: object, event: Event[CallbackRefused], out: object) -> None:
        raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"on_refused for callback.refused needs out"):
        bind({CallbackRefused: on_refused}, policy="p")


@pytest.mark.parametrize("service", ["scheduler", "outcomes", "notifier"])
def test_every_service_table_is_keyed_by_event_class_and_binds(service: str) -> None:
    import importlib
    import typing

    from shared.events import EVENT_MODELS
    from shared.kafka import bind

    module = importlib.import_module(f"services.{service}.handlers")
    table = module.HANDLERS
    assert table and set(table) <= set(EVENT_MODELS)
    assert set(bind(table, policy=object(), cipher=object(), out=object(), notices=object())) == set(table)
    # mypy cannot see through the table's Callable[..., ...]: each handler must take the event it is keyed by.
    for model, handler in table.items():
        (accepted,) = typing.get_args(typing.get_type_hints(handler, vars(module))["event"])
        assert issubclass(model, accepted), f"{handler.__name__} takes Event[{accepted.__name__}], not {model.__name__}"


# --- client options ----------------------------------------------------------------------------


def test_sasl_ssl_options_take_scram_credentials_and_verify_the_broker() -> None:
    import ssl

    from pydantic import SecretStr

    from shared.kafka import client_options
    from shared.settings import Settings

    base = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="huifang",
        kafka_sasl_password=SecretStr("s3cret-s3cret"),
    )
    options = client_options(base)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"  # the default: the password never crosses the wire
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("huifang", "s3cret-s3cret")
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    chosen = client_options(base.model_copy(update={"kafka_sasl_mechanism": "SCRAM-SHA-256"}))
    assert chosen["sasl_mechanism"] == "SCRAM-SHA-256"
    assert "sasl_mechanism" not in client_options(Settings())
