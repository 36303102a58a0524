"""STARTTLS and implicit TLS with AUTH against real aiosmtpd servers with trustme certificates."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from followup.config import Settings
from followup.delivery import dispatcher
from followup.delivery.report import DispatchReport
from followup.delivery.smtp import SmtpSetupError
from followup.planning.plan import plan
from followup.runtime import Runtime
from followup.storage import tables
from tests.support.settings import make_settings
from tests.support.shop import NOW, seed
from tests.support.smtp import LoopbackController, RecordingHandler

# The implicit-TLS server is told not to require TLS for AUTH (see tls_server); aiosmtpd warns.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

LOGIN, PASSWORD = "shop", "correct horse battery staple"


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == LOGIN.encode()
        and auth_data.password == PASSWORD.encode()
    )
    # handled=False: aiosmtpd then answers 535 itself on a refusal.
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


Server = tuple[int, RecordingHandler]


@pytest.fixture
def tls_server(request: pytest.FixtureRequest, ca: trustme.CA) -> Iterator[Server]:
    """A server in the mode named by the test's parameter: "starttls" or "tls"."""
    handler = RecordingHandler()
    context = server_context(ca)
    options: dict[str, Any] = {
        "authenticator": authenticator,
        "auth_required": True,
        "auth_require_tls": True,
    }
    controller: LoopbackController
    if request.param == "starttls":
        controller = LoopbackController(
            handler,
            tls_context=context,
            require_starttls=True,
            **options,
        )
    else:
        # The whole session is TLS; aiosmtpd only counts STARTTLS as TLS for AUTH, so it must
        # not be asked to require it here.
        options["auth_require_tls"] = False
        controller = LoopbackController(handler, ssl_context=context, **options)
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


def tls_settings(tmp_path: Path, ca: trustme.CA, security: str, port: int, **smtp: str) -> Settings:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    values = {
        "host": "127.0.0.1",
        "port": str(port),
        "security": security,
        "ca_file": str(ca_file),
        "username": LOGIN,
        "password": PASSWORD,
        **smtp,
    }
    return make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'followup.db'}", delivery={"mode": "smtp"}, smtp=values
    )


def dispatch(rt: Runtime) -> DispatchReport:
    clock: Callable[[], datetime] = lambda: NOW  # noqa: E731
    return asyncio.run(dispatcher.dispatch(rt, clock))


def statuses(rt: Runtime) -> list[str]:
    with rt.engine.connect() as conn:
        return sorted(conn.execute(select(tables.touches.c.status)).scalars())


@pytest.mark.parametrize("tls_server", ["starttls", "tls"], indirect=True)
def test_tls_with_auth_delivers(
    tls_server: Server,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    ca: trustme.CA,
    open_runtime: Callable[[Settings], Runtime],
) -> None:
    port, handler = tls_server
    security = request.node.callspec.params["tls_server"]
    rt = open_runtime(tls_settings(tmp_path, ca, security, port))
    seed(rt, tmp_path)
    plan(rt, NOW)
    assert dispatch(rt).sent == 3
    assert len(handler.received) == 3
    assert statuses(rt) == ["sent", "sent", "sent"]


@pytest.mark.parametrize("pool_size", ["1", "3"])
@pytest.mark.parametrize("tls_server", ["starttls", "tls"], indirect=True)
def test_an_untrusted_certificate_is_refused_with_a_clear_error(
    tls_server: Server,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    open_runtime: Callable[[Settings], Runtime],
    pool_size: str,
) -> None:
    """With a pool, every connection fails the same way: the first error stops the run and
    cancels the others while they connect, and their touches go back to the queue too."""
    port, handler = tls_server
    security = request.node.callspec.params["tls_server"]
    stranger = trustme.CA()  # the client trusts another CA than the one that signed the server
    rt = open_runtime(tls_settings(tmp_path, stranger, security, port, pool_size=pool_size))
    seed(rt, tmp_path)
    plan(rt, NOW)
    with pytest.raises(
        SmtpSetupError,
        match=r"127\.0\.0\.1:\d+: its TLS certificate is not "
        r"trusted .*\[smtp\] ca_file",
    ):
        dispatch(rt)
    assert handler.received == []
    # Nothing was sent, so nothing is uncertain: every touch is back in the queue.
    assert statuses(rt) == ["planned", "planned", "planned"]


@pytest.mark.parametrize("tls_server", ["starttls"], indirect=True)
def test_a_refused_login_stops_the_run_and_names_the_setting(
    tls_server: Server,
    tmp_path: Path,
    ca: trustme.CA,
    open_runtime: Callable[[Settings], Runtime],
) -> None:
    port, handler = tls_server
    rt = open_runtime(tls_settings(tmp_path, ca, "starttls", port, password="wrong"))
    seed(rt, tmp_path)
    plan(rt, NOW)
    with pytest.raises(SmtpSetupError, match="refused the login of \\[smtp\\] username 'shop'"):
        dispatch(rt)
    assert handler.received == []
    assert statuses(rt) == ["planned", "planned", "planned"]


def test_plain_text_is_refused_by_a_server_that_requires_starttls(
    tmp_path: Path, ca: trustme.CA, open_runtime: Callable[[Settings], Runtime]
) -> None:
    """security = "none" against a STARTTLS-only server: the login cannot happen in clear."""
    handler = RecordingHandler()
    controller = LoopbackController(
        handler,
        tls_context=server_context(ca),
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    port = controller.port
    try:
        # A login in clear text is refused by the configuration unless allowed on purpose;
        # allowed, the server that requires STARTTLS still refuses it.
        rt = open_runtime(tls_settings(tmp_path, ca, "none", port, allow_cleartext_auth="true"))
        seed(rt, tmp_path)
        plan(rt, NOW)
        with pytest.raises(SmtpSetupError, match="cannot log in"):
            dispatch(rt)
    finally:
        controller.stop()
    assert handler.received == []
