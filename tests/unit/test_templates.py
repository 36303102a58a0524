"""The shipped messages, design variants, `followup templates check`'s checks (lint.py),
previews and the sandbox against known escapes. No database, no network."""

from __future__ import annotations

import filecmp
import re
import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError

from followup.config import Settings
from followup.domain import tokens
from followup.errors import RenderError
from followup.messages import compose, lint, preview
from followup.messages.templates import Templates
from followup.messages.variants import choose_variant, parse_variants
from tests.support.settings import ROOT, make_settings

TEMPLATES = ROOT / "templates"
SHIPPED = [
    "anniversary",
    "birthday",
    "holiday",
    "new_year",
    "service_reminder",
    "survey",
    "thank_you",
]
SPACE = "[\u00a0\u202f]"
DAY = date(2027, 12, 25)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}")


@pytest.fixture
def templates() -> Templates:
    return Templates(TEMPLATES, default_locale="en")


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    shutil.copytree(TEMPLATES, root)
    return root


# ----------------------------------------------------------------------------- shipped messages


def test_every_shipped_message_is_there_in_english_and_french_with_3_variants(
    templates: Templates,
) -> None:
    assert set(SHIPPED) <= set(templates.messages())
    for message in SHIPPED:
        assert {"en", "fr"} <= set(templates.locales(message)), message
        assert len(templates.variants(message)) >= 3, message


def test_the_skeleton_that_followup_init_copies_is_the_shipped_templates() -> None:
    skeleton = ROOT / "followup" / "skeleton" / "templates"
    compared = filecmp.dircmp(TEMPLATES, skeleton)
    pending = [compared]
    while pending:
        current = pending.pop()
        assert not current.left_only and not current.right_only, current.left
        _, mismatch, errors = filecmp.cmpfiles(
            current.left, current.right, current.common_files, shallow=False
        )
        assert not mismatch and not errors, (current.left, mismatch, errors)
        pending.extend(current.subdirs.values())


#: (message, locale) -> what the rendered text must contain, dates and money in that locale.
EXPECTED: dict[tuple[str, str], list[str]] = {
    ("thank_you", "en"): ["Dear Alex,", "on December 23, 2027."],
    ("thank_you", "fr"): ["Bonjour Zoé,", "le 23 décembre 2027."],
    ("survey", "en"): ["On December 11, 2027", "($32,500.00)", "/survey/"],
    ("survey", "fr"): ["Le 11 décembre 2027", f"(18{SPACE}900,00{SPACE}€)", "/survey/"],
    ("service_reminder", "en"): ["since June 28, 2027"],
    ("service_reminder", "fr"): ["depuis le 28 juin 2027"],
    ("holiday", "en"): ["Christmas Day is here (December 25, 2027)"],
    ("holiday", "fr"): ["C'est Noël (25 décembre 2027)"],
    ("new_year", "en"): ["Happy New Year! On this New Year's Day 2027"],
    ("new_year", "fr"): ["Bonne année ! En ce jour de l'an 2027"],
    ("birthday", "en"): ["Happy birthday!"],
    ("birthday", "fr"): ["Joyeux anniversaire !"],
    ("anniversary", "en"): ["It has been 3 years since you first chose Girard Motors"],
    ("anniversary", "fr"): ["Cela fait 3 ans que vous avez choisi Girard Motors"],
}


@pytest.mark.parametrize(("message", "language"), sorted(EXPECTED))
def test_each_shipped_message_renders_in_its_language_with_local_formats(
    settings: Settings, templates: Templates, message: str, language: str
) -> None:
    facts = preview.SAMPLES[f"sample-{language}"]
    for variant in templates.variants(message):
        shown = preview.render(settings, templates, message, facts, on=DAY, variant=variant.name)
        composed = shown.composed
        assert composed.locale == language
        assert composed.variant == variant.name
        for expected in EXPECTED[message, language]:
            assert re.search(expected if "[" in expected else re.escape(expected), composed.text), (
                expected,
                composed.text,
            )
        # Signed by the client's rep, with the unsubscribe link, in both parts.
        assert facts.rep_signature is not None
        assert facts.rep_signature.splitlines()[0] in composed.text
        assert facts.rep_signature.splitlines()[0] in composed.html
        assert "/unsubscribe/" in composed.text and "/unsubscribe/" in composed.html
        assert f'<html lang="{facts.locale}">' in composed.html
        assert variant.colours["accent"] in composed.html
        assert "<style" not in composed.html
        english = {"Dear", "Unsubscribe", "Thank you"}
        if language == "fr":
            assert not any(word in composed.text for word in english), composed.text


def test_the_variants_look_different(settings: Settings, templates: Templates) -> None:
    facts = preview.SAMPLES["sample-en"]
    htmls = {
        v.name: preview.render(
            settings, templates, "birthday", facts, on=DAY, variant=v.name
        ).composed.html
        for v in templates.variants("birthday")
    }
    assert len(set(htmls.values())) == len(htmls) >= 3


def test_the_holiday_message_uses_the_occasions_localised_name(
    settings: Settings, templates: Templates
) -> None:
    facts = preview.SAMPLES["sample-fr"]
    composed = compose.compose(
        settings,
        templates,
        facts,
        campaign="holidays_fr",
        template="holiday",
        occurrence=date(2027, 7, 14),
        send_at=datetime(2027, 7, 14, 8, 0, tzinfo=UTC),
        key="k",
        occasion={"kind": "holiday", "name": "Fête nationale"},
    )
    assert composed.subject == "Fête nationale : meilleurs vœux, Zoé"
    assert "C'est Fête nationale (14 juillet 2027)" in composed.text


# ----------------------------------------------------------------------------- compose: context


def _compose(settings: Settings, templates: Templates, root: Path | None, **kw: Any) -> Any:
    facts = preview.SAMPLES["sample-en"]
    return compose.compose(
        settings,
        Templates(root) if root else templates,
        facts,
        campaign="spring_sale",
        template=kw.pop("template", "probe"),
        occurrence=date(2027, 3, 20),
        send_at=datetime(2027, 3, 20, 14, 0, tzinfo=UTC),
        key="secret",
        **kw,
    )


def _probe(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "templates"
    folder = root / "probe" / "en"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("s")
    (folder / "html.html").write_text("h")
    (folder / "text.txt").write_text(text)
    return root


def test_the_occasion_has_defaults_and_takes_what_the_caller_gives(
    settings: Settings, templates: Templates, tmp_path: Path
) -> None:
    root = _probe(
        tmp_path,
        "{{ occasion.campaign }}|{{ occasion.kind }}|{{ occasion.name }}|{{ occasion.date }}|"
        "{{ occasion.years }}",
    )
    default = _compose(settings, templates, root)
    assert default.text == "spring_sale|after_purchase|Spring sale|2027-03-20|None\n"
    given_ = _compose(
        settings, templates, root, occasion={"kind": "yearly", "name": "Birthday", "years": 40}
    )
    assert given_.text == "spring_sale|yearly|Birthday|2027-03-20|40\n"


def test_the_survey_link_is_signed_for_this_touch(
    settings: Settings, templates: Templates, tmp_path: Path
) -> None:
    root = _probe(tmp_path, "{{ links.survey }}")
    link = _compose(settings, templates, root).text.strip()
    prefix = f"{settings.http.public_url.rstrip('/')}/survey/"
    assert link.startswith(prefix)
    token = link[len(prefix) :]
    assert tokens.verify("secret", compose.SURVEY, token) == "0-20270320-spring_sale"
    assert tokens.verify("secret", compose.UNSUBSCRIBE, token) is None


# ----------------------------------------------------------------------------- variants


@given(
    names=st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=6, unique=True),
    key=st.text(max_size=40),
    data=st.data(),
)
def test_the_chosen_variant_is_never_the_previous_one(
    names: list[str], key: str, data: st.DataObject
) -> None:
    previous = data.draw(st.one_of(st.none(), st.sampled_from(names)))
    chosen = choose_variant(names, key, previous)
    assert chosen in names and chosen != previous
    assert choose_variant(names, key, previous) == chosen


def test_a_variant_may_have_its_own_part(
    settings: Settings, templates: Templates, tmp_path: Path
) -> None:
    root = _copy(tmp_path)
    (root / "birthday" / "en" / "subject.sage.txt").write_text("A sage birthday!\n")
    local = Templates(root)
    facts = preview.SAMPLES["sample-en"]
    sage = preview.render(settings, local, "birthday", facts, on=DAY, variant="sage")
    plum = preview.render(settings, local, "birthday", facts, on=DAY, variant="plum")
    assert sage.composed.subject == "A sage birthday!"
    assert plum.composed.subject == "Happy birthday, Alex!"


def test_a_message_may_have_its_own_variants(settings: Settings, tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "birthday" / "variants.toml").write_text(
        '[[variant]]\nname = "gold"\naccent = "#c9a227"\n\n'
        '[[variant]]\nname = "silver"\naccent = "#8a8d91"\nbackground = "#f4f4f4"\n'
    )
    local = Templates(root)
    assert [v.name for v in local.variants("birthday")] == ["gold", "silver"]
    assert [v.name for v in local.variants("holiday")][:1] == ["terracotta"]
    html = preview.render(
        settings, local, "birthday", preview.SAMPLES["sample-en"], on=DAY, variant="silver"
    ).composed.html
    assert "#8a8d91" in html and "#f4f4f4" in html
    with pytest.raises(RenderError, match=r"no variant 'plum' \(known: gold, silver\)"):
        local.render("birthday", "en", {}, "plum")


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('[[variant]]\nname = "a"\naccent = "red; x"\n', r"variant 'a': accent = 'red; x'"),
        ('[[variant]]\nname = "a"\nshade = "#fff"\n', r"variant 'a': unknown key 'shade'"),
        ('[[variant]]\nname = "Bad Name"\n', r"variant 'Bad Name': name must be"),
        ('[[variant]]\naccent = "#fff"\n', r"variant 1: name must be"),
        ('[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n', r"variant 'a': defined twice"),
        ("colour = 1\n", r"unknown key\(s\) colour"),
        ("[[variant]\n", r"_variants\.toml: "),
    ],
)
def test_a_bad_variants_file_is_an_error_naming_the_file(
    tmp_path: Path, content: str, error: str
) -> None:
    path = tmp_path / "_variants.toml"
    path.write_text(content)
    with pytest.raises(RenderError, match=error) as caught:
        parse_variants(path, "templates/_variants.toml")
    assert str(caught.value).startswith("templates/_variants.toml: ")


# ----------------------------------------------------------------------------- lint


def test_the_shipped_templates_pass_the_check(settings: Settings, templates: Templates) -> None:
    report = lint.check(settings, templates)
    assert report.problems == []
    assert report.rendered >= len(SHIPPED) * 2 * 3


def test_the_check_names_file_line_and_the_missing_variable(
    settings: Settings, tmp_path: Path
) -> None:
    root = _copy(tmp_path)
    text = root / "birthday" / "fr" / "text.txt"
    text.write_text(text.read_text().replace("Joyeux anniversaire !", "{{ client.nickname }} !"))
    (root / "holiday" / "en" / "subject.txt").write_text("{% if occasion.name %}Hi\n")
    report = lint.check(settings, Templates(root))
    lines = [str(p) for p in report.problems]
    assert any(
        line.startswith("templates/birthday/fr/text.txt:3: ") and "nickname" in line
        for line in lines
    ), lines
    assert any(
        line.startswith("templates/holiday/en/subject.txt:1: ") and "endif" in line
        for line in lines
    ), lines
    # One report per broken spot, not one per variant.
    assert len(lines) == len(set(lines)) == 2, lines


def test_the_check_finds_a_broken_partial_and_a_missing_default_locale(
    settings: Settings, tmp_path: Path
) -> None:
    root = _copy(tmp_path)
    (root / "_partials" / "en" / "footer.txt").write_text("--\n{{ links.unsubscribe }\n")
    shutil.rmtree(root / "survey" / "en")
    problems = [str(p) for p in lint.check(settings, Templates(root)).problems]
    assert any(p.startswith("templates/_partials/en/footer.txt:2: ") for p in problems), problems
    assert any(p.startswith("templates/survey: no en/ folder") for p in problems), problems


def test_the_check_finds_a_campaign_without_its_message(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'x.db'}",
        campaigns_thank_you={"template": "thanks_typo"},
    )
    problems = [str(p) for p in lint.check(settings, Templates(TEMPLATES)).problems]
    assert problems == [
        f"config.toml: [campaigns.thank_you] template: no message 'thanks_typo' in {TEMPLATES}"
    ]


def test_the_check_finds_an_occasion_without_its_message_and_a_broken_calendar(
    tmp_path: Path,
) -> None:
    calendars_dir = tmp_path / "calendars"
    calendars_dir.mkdir()
    (calendars_dir / "shop.toml").write_text(
        '[occasions.open_day]\nkind = "rrule"\ndtstart = "2027-06-05"\n'
        'rrule = "FREQ=YEARLY"\ntemplate = "open_day"\n',
        encoding="utf-8",
    )
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")
    settings = settings.model_copy(update={"calendars_dir": str(calendars_dir)})
    problems = [str(p) for p in lint.check(settings, Templates(TEMPLATES)).problems]
    assert problems == [
        f"{calendars_dir / 'shop.toml'}:5: [occasions.open_day] template: "
        f"no message 'open_day' in {TEMPLATES}"
    ]
    (calendars_dir / "shop.toml").write_text('[occasions.x]\nkind = "weekly"\n')
    problems = [str(p) for p in lint.check(settings, Templates(TEMPLATES)).problems]
    assert len(problems) == 1
    assert problems[0].startswith(f"{calendars_dir / 'shop.toml'}:2: [occasions.x] kind:")


# ----------------------------------------------------------------------------- sandbox

#: Known ways out of a Jinja2 sandbox, by family. Each must fail with a SecurityError and
#: render nothing.
SANDBOX_ESCAPES = {
    "str.format attribute": "{{ '{0.__class__}'.format(client) }}",
    "str.format globals": "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "str.format_map": "{{ '{x.__init__.__globals__}'.format_map({'x': joiner}) }}",
    "format through attr": "{{ '{0.__class__}'|attr('format')(1) }}",
    "format filter": "{{ '%s'|format(''.__class__) }}",
    "attr __class__": "{{ client|attr('__class__') }}",
    "attr chain": "{{ ''|attr('__class__')|attr('__mro__') }}",
    "attr through map": "{{ ['x']|map('attr', '__class__')|list }}",
    "attr __globals__": "{{ lipsum|attr('__globals__') }}",
    "__class__": "{{ ''.__class__ }}",
    "__mro__": "{{ ''.__class__.__mro__ }}",
    "__subclasses__": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "__base__": "{{ ().__class__.__base__.__subclasses__() }}",
    "__getitem__": "{{ client.__getitem__('first_name') }}",
    "bound method __self__": "{{ client.items.__self__ }}",
    "cycler": "{{ cycler.__init__.__globals__.os }}",
    "cycler method": "{{ cycler.next.__globals__ }}",
    "joiner": "{{ joiner.__init__.__globals__ }}",
    "lipsum": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "namespace": "{{ namespace.__init__.__globals__ }}",
    "namespace object": "{{ namespace().__class__ }}",
    "self": "{{ self.__init__.__globals__ }}",
    "filter globals": "{{ (client|map)|attr('__class__') }}",
}


@pytest.mark.parametrize("payload", list(SANDBOX_ESCAPES.values()), ids=list(SANDBOX_ESCAPES))
def test_known_sandbox_escapes_fail_with_a_sandbox_error(tmp_path: Path, payload: str) -> None:
    root = _probe(tmp_path, f"before {payload} after")
    rendered = None
    with pytest.raises(RenderError) as caught:
        rendered = Templates(root).render("probe", "en", {"client": {"first_name": "Ann"}})
    assert rendered is None
    assert isinstance(caught.value.__cause__, SecurityError), repr(caught.value.__cause__)
    assert str(caught.value).startswith("templates/probe/en/text.txt:1: ")
    assert "unsafe" in str(caught.value)
