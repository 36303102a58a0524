"""The studio in a real browser (headless Chromium over the DevTools protocol): the page lists
every message, locale and variant, shows a rendered message for a sample and a real client,
shows template errors inline and follows edits of templates/ by itself. Also screenshots of
every shipped message's HTML at 375 and 800 px, with no horizontal overflow.

Screenshots are written to test-output/screenshots/ (ignored by git); the path is printed.
"""

from __future__ import annotations

import http.client
import json
import shutil
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest

from followup.config import Settings
from followup.importing import importer
from followup.messages.templates import Templates
from followup.runtime import Runtime
from followup.service import studio
from followup.storage.schema import upgrade
from tests.support.cdp import Page, browser, ensure_chromium
from tests.support.settings import ROOT, make_settings
from tests.support.studio import run_in_thread

SCREENSHOTS = ROOT / "test-output" / "screenshots"
DAY = date(2027, 12, 25)
CLIENTS = (
    "id,email,first_name,last_name,locale,timezone,country\n"
    "c1,ann@example.com,Ann,Lee,en-US,America/New_York,US\n"
)
PURCHASES = "id,client,purchased_at,product,amount,currency\np1,c1,2027-12-01,Roadster,100,USD\n"


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    """One Chromium for the whole module."""
    executable = ensure_chromium()
    if executable is None:
        pytest.skip("Chromium is not installed and apt-get could not install it")
    with browser(executable) as tab:
        yield tab


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[studio.StudioServer]:
    """A studio over a copy of the shipped templates and a database with one real client."""
    tmp_path = tmp_path_factory.mktemp("studio")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    settings: Settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'followup.db'}",
        templates={"dir": str(tmp_path / "templates")},
    )
    rt = Runtime.open(settings, create=True)
    upgrade(rt.engine)
    now = datetime(2027, 12, 2, tzinfo=UTC)
    for kind, content in (("clients", CLIENTS), ("purchases", PURCHASES)):
        path = tmp_path / f"{kind}.csv"
        path.write_text(content, encoding="utf-8")
        assert not importer.import_csv(rt.engine, importer.Kind(kind), path, now=now).errors
    rt.engine.dispose()
    running = studio.serve(settings, DAY, 0)
    run_in_thread(running)
    try:
        yield running
    finally:
        running.shutdown()
        running.server_close()
        running.studio.close()


def test_the_studio_binds_loopback_and_refuses_other_hosts(
    server: studio.StudioServer,
) -> None:
    assert server.server_address[0] == "127.0.0.1"
    port = server.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/api/catalog", headers={"Host": f"attacker.example:{port}"})
    assert connection.getresponse().status == 403
    connection.close()
    with urllib.request.urlopen(server.url + "api/catalog", timeout=30) as reply:
        catalog = json.loads(reply.read())
    assert {m["name"] for m in catalog["messages"]} >= {"thank_you", "holiday", "survey"}


def test_the_page_lists_everything_and_renders_a_message(
    page: Page, server: studio.StudioServer
) -> None:
    page.viewport(1280)
    page.goto(server.url + "#thank_you/fr/harbour")
    subject = page.wait_for("document.getElementById('subject').textContent")
    assert subject == "Merci, Zoé !"
    shown = page.evaluate(
        "[...document.querySelectorAll('.message')].map(m => [m.querySelector('h2')"
        ".textContent, m.querySelectorAll('.choice').length])"
    )
    templates = Templates(ROOT / "templates")
    assert shown == [
        [m, len(templates.locales(m)) + len(templates.variants(m))] for m in templates.messages()
    ]
    assert "le 23 décembre 2027" in page.evaluate("document.getElementById('text').textContent")
    frame = page.wait_for(
        "document.getElementById('frame').contentDocument?.querySelector('h1')?.textContent"
    )
    assert frame == "Merci, Zoé !"
    meta = page.evaluate("document.getElementById('meta').textContent")
    assert "variant harbour" in meta
    page.screenshot(SCREENSHOTS / "studio.png")


def test_the_page_renders_for_a_real_client(page: Page, server: studio.StudioServer) -> None:
    page.goto(server.url + "#thank_you/en/sage")
    page.wait_for("document.getElementById('subject').textContent === 'Thank you, Alex!'")
    page.evaluate(
        "document.getElementById('real').value = 'c1';"
        "document.getElementById('real').onchange(); true"
    )
    page.wait_for("document.getElementById('subject').textContent === 'Thank you, Ann!'")
    text = page.evaluate("document.getElementById('text').textContent")
    assert "Roadster" in text and "December 1, 2027" in text
    page.evaluate(
        "document.getElementById('real').value = 'nobody';"
        "document.getElementById('real').onchange(); true"
    )
    error = page.wait_for("document.getElementById('error').textContent")
    assert "no client with id 'nobody'" in error
    page.evaluate("document.getElementById('real').value = ''; true")


def test_the_page_follows_template_edits_and_shows_errors_inline(
    page: Page, server: studio.StudioServer
) -> None:
    folder = server.studio.root / "birthday" / "en"
    subject, html, text = (folder / n for n in ("subject.txt", "html.html", "text.txt"))
    originals = {p: p.read_text(encoding="utf-8") for p in (subject, html, text)}
    try:
        page.goto(server.url + "#birthday/en/plum")
        page.wait_for("document.getElementById('subject').textContent === 'Happy birthday, Alex!'")
        subject.write_text("Many happy returns, {{ client.first_name }}!\n", encoding="utf-8")
        html.write_text(
            originals[html].replace("<h1>Happy birthday,", "<h1>Many happy returns,"),
            encoding="utf-8",
        )
        # No reload from the test: the page notices the save by itself.
        page.wait_for(
            "document.getElementById('subject').textContent === 'Many happy returns, Alex!'"
        )
        page.wait_for(
            "document.getElementById('frame').contentDocument?.querySelector('h1')"
            "?.textContent === 'Many happy returns, Alex!'"
        )
        text.write_text("Dear {{ client.first_name }},\n{{ client.nickname }}\n", encoding="utf-8")
        error = page.wait_for("document.getElementById('error').textContent")
        assert error.startswith("templates/birthday/en/text.txt:2: ")
        assert "nickname" in error
        text.write_text("Dear {{ client.first_name }},\n{% if x %}\n", encoding="utf-8")
        problems = page.wait_for(
            "document.getElementById('problems').textContent.includes('text.txt:2')"
            " && document.getElementById('problems').textContent"
        )
        assert "templates/birthday/en/text.txt:2: " in problems
    finally:
        for path, content in originals.items():
            path.write_text(content, encoding="utf-8")
    page.wait_for("document.getElementById('error').className === 'hidden'")


@pytest.mark.parametrize("width", [375, 800])
def test_every_shipped_message_holds_its_layout(
    page: Page, server: studio.StudioServer, width: int
) -> None:
    templates = Templates(ROOT / "templates")
    page.viewport(width)
    shots = []
    for number, message in enumerate(templates.messages()):
        variants = templates.variants(message)
        for locale in templates.locales(message):
            variant = variants[(number + len(shots)) % len(variants)].name
            client = f"sample-{locale.split('-')[0]}"
            page.goto(
                f"{server.url}message.html?message={message}&locale={locale}"
                f"&variant={variant}&client={client}&on={DAY}"
            )
            scroll, inner, h1 = page.evaluate(
                "[document.documentElement.scrollWidth, window.innerWidth,"
                " document.querySelector('h1')?.textContent]"
            )
            assert h1, (message, locale)
            assert scroll <= inner == width, (message, locale, variant, scroll)
            path = SCREENSHOTS / f"{message}-{locale}-{variant}-{width}.png"
            page.screenshot(path)
            assert path.stat().st_size > 1000
            shots.append(path)
    assert len(shots) >= 14
    print(f"\n{len(shots)} screenshots at {width} px in {SCREENSHOTS}")
