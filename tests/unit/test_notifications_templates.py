"""Message templates: checked when saved (variables down to the attribute, syntax, channel rules),
rendered in a sandbox when sent."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifications.domain.templates import (
    CHANNELS,
    LOCALES,
    TRIGGERS,
    RenderError,
    TemplateParts,
    TemplateSpec,
    build_context,
    fingerprint,
    render,
    render_example,
    sample_context,
    validate,
    variables,
    yuan,
)


def spec(
    channel: str = "console", trigger: str = "coupon.issued", locale: str = "zh-CN", **parts: object
) -> TemplateSpec:
    return TemplateSpec(channel, locale, trigger, TemplateParts(**parts))  # type: ignore[arg-type]


def problems(s: TemplateSpec, extra: tuple[str, ...] = ()) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in validate(s, extra):
        out.setdefault(p.field, []).append(p.message)
    return out


# ---------------------------------------------------------------- variables checked at save time


def test_a_misspelt_attribute_is_refused_when_saved_naming_the_part_and_the_variable() -> None:
    found = problems(spec(text="您的{{ coupon.nmae }}已到账"))
    assert list(found) == ["parts.text"]
    assert "coupon.nmae" in found["parts.text"][0]
    assert "coupon.name" in found["parts.text"][0]  # the suggestion


def test_an_unknown_top_level_variable_is_refused() -> None:
    assert "cupon" in problems(spec(text="{{ cupon.name }}"))["parts.text"][0]


def test_a_misspelt_item_access_is_refused_like_an_attribute() -> None:
    assert "coupon.nmae" in problems(spec(text="{{ coupon['nmae'] }}"))["parts.text"][0]


def test_a_variable_of_another_trigger_is_refused() -> None:
    assert "points" in problems(spec(trigger="coupon.issued", text="{{ points.amount }}"))["parts.text"][0]


def test_a_group_of_variables_is_not_a_value() -> None:
    assert "group" in problems(spec(text="{{ coupon }}"))["parts.text"][0]


def test_a_computed_key_cannot_be_checked_so_it_is_refused() -> None:
    assert "computed" in problems(spec(text="{% set k = 'name' %}{{ coupon[k] }}"))["parts.text"][0]


def test_reading_into_a_value_is_the_values_business() -> None:
    s = spec(text="{{ now.year }} {{ coupon.name.upper() }} {{ segment_tags|default('') }}")
    assert "segment_tags" in problems(s)["parts.text"][0]
    assert validate(spec(text="{{ now.year }} {{ coupon.name.upper() }} {{ coupon.name|truncate(5) }}")) == []


def test_loop_variables_and_sets_are_the_templates_own() -> None:
    s = spec(
        trigger="segment.changed",
        text="{% for t in segment.entered %}{{ loop.index }}{{ t }}{% endfor %}{% set x = 1 %}{{ x }}",
    )
    assert validate(s) == []


def test_declared_campaign_variables_are_read_under_vars() -> None:
    s = spec(trigger="campaign", text="{{ vars.headline }}：{{ campaign.name }}")
    assert validate(s, ["headline"]) == []
    assert "vars" in problems(s)["parts.text"][0]  # undeclared
    misspelt = problems(spec(trigger="campaign", text="{{ vars.hedline }}"), ("headline",))
    assert "vars.hedline" in misspelt["parts.text"][0]


def test_a_declared_variable_may_not_shadow_a_mapping_method() -> None:
    assert "vars.items" in problems(spec(text="x"), ("items",))


def test_variables_lists_common_trigger_and_declared_names() -> None:
    names = variables("coupon.expiring", ["headline"])
    assert {"customer.name", "shop.name", "now", "unsubscribe_url", "coupon.days_left", "vars.headline"} <= names
    assert "coupon.face_value_fen" not in names


# ---------------------------------------------------------------- syntax, sandbox, filters


def test_a_syntax_error_is_refused_with_its_line() -> None:
    found = problems(spec(text="第一行\n{% if coupon.name %}\n没有结束"))
    assert found["parts.text"][0].startswith("line 3")


def test_an_unknown_filter_is_refused_even_inside_an_if() -> None:
    assert "nofilter" in problems(spec(text="{% if now %}{{ coupon.name|nofilter }}{% endif %}"))["parts.text"][0]


def test_include_and_extends_are_not_available() -> None:
    assert "include" in problems(spec(text="{% include 'x.html' %}"))["parts.text"][0]


def test_the_sandbox_refuses_dunder_access_when_saved() -> None:
    assert "__class__" in problems(spec(text="{{ ''.__class__.__mro__ }}"))["parts.text"][0]


def test_the_sandbox_refuses_dunder_access_when_rendered_instead_of_running_it() -> None:
    with pytest.raises(RenderError) as err:
        render(spec(text="{{ ''.__class__.__mro__ }}"), sample_context("coupon.issued"))
    assert err.value.field == "parts.text"
    assert "unsafe" in err.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 1000000 }}",
        "{{ 2 ** 100000 }}",
        "{{ '%099999d' % 1 }}",
        "{{ range(10000000)|list|length }}",
        "{{ [].append(1) }}",
    ],
)
def test_templates_cannot_exhaust_the_machine_or_mutate_things(source: str) -> None:
    assert "parts.text" in problems(spec(text=source))


def test_a_type_error_on_the_sample_values_is_refused_at_save_time() -> None:
    assert "yuan" in problems(spec(text="{{ coupon.name|yuan }}"))["parts.text"][0]


def test_yuan_prints_whole_yuan_without_decimals() -> None:
    assert [yuan(3000), yuan(1250), yuan(5), yuan(0), yuan(-500)] == ["¥30", "¥12.50", "¥0.05", "¥0", "-¥5"]
    with pytest.raises(TypeError):
        yuan(12.5)


def test_dates_are_shown_on_the_merchants_clock_in_the_locale() -> None:
    s = spec(text="{{ coupon.expires_at|date }} {{ coupon.expires_at|datetime }} {{ coupon.expires_at|date('%m/%d') }}")
    ctx = sample_context("coupon.issued")
    ctx["coupon"] = {**ctx["coupon"], "expires_at": datetime(2026, 11, 30, 16, 30, tzinfo=ZoneInfo("UTC"))}
    assert render(s, ctx).text == "2026年12月1日 2026年12月1日 00:30 12/01"
    ctx["locale"] = "en"
    ctx["tz"] = "America/New_York"
    assert render(s, ctx).text == "2026-11-30 2026-11-30 11:30 11/30"


# ---------------------------------------------------------------- rendering


def test_html_is_autoescaped_and_text_is_not() -> None:
    s = spec(
        channel="email", subject="{{ customer.name }}", text="{{ customer.name }}", html="<p>{{ customer.name }}</p>"
    )
    ctx = sample_context("coupon.issued")
    ctx["customer"] = {**ctx["customer"], "name": "<b>林&晓</b>"}
    out = render(s, ctx)
    assert out.html == "<p>&lt;b&gt;林&amp;晓&lt;/b&gt;</p>"
    assert out.text == "<b>林&晓</b>"
    assert out.subject == "<b>林&晓</b>"


def test_a_wechat_thing_field_is_cut_to_twenty_characters_with_an_ellipsis() -> None:
    s = spec(
        channel="wechat",
        provider_template="tmpl-abc",
        page="pages/coupon?id={{ coupon.id }}",
        fields={
            "thing1": "{{ coupon.name }}",
            "character_string2": "{{ coupon.id }}",
            "name3": "{{ customer.name }}",
            "time4": "{{ coupon.expires_at|datetime }}",
        },
    )
    assert validate(s) == []
    ctx = sample_context("coupon.issued")
    ctx["coupon"] = {**ctx["coupon"], "name": "满一百九十九减三十元全场通用回购专享优惠券（限时）", "id": "C" * 40}
    ctx["customer"] = {**ctx["customer"], "name": "欧阳娜娜娜娜娜娜娜娜娜"}
    out = render(s, ctx)
    assert len(out.fields["thing1"]) == 20 and out.fields["thing1"].endswith("…")
    assert out.fields["thing1"][:19] == ctx["coupon"]["name"][:19]
    assert out.fields["character_string2"] == "C" * 32  # cut without an ellipsis
    assert len(out.fields["name3"]) == 10
    assert out.fields["time4"] == "2026年11月14日 10:00"
    assert out.page == "pages/coupon?id=" + "C" * 40
    assert out.provider_template == "tmpl-abc"


def test_null_values_print_as_nothing_but_missing_ones_fail() -> None:
    ctx = sample_context("level.changed")
    ctx["level"] = {**ctx["level"], "previous": None}
    assert render(spec(trigger="level.changed", text="[{{ level.previous }}]"), ctx).text == "[]"
    del ctx["level"]
    with pytest.raises(RenderError):
        render(spec(trigger="level.changed", text="{{ level.name }}"), ctx)


def test_the_unsubscribe_url_comes_from_the_context() -> None:
    out = render(spec(channel="email", subject="s", text="退订：{{ unsubscribe_url }}"), sample_context("campaign"))
    assert out.unsubscribe_url == "https://fugou.example/u/sample-token"
    assert out.text == "退订：https://fugou.example/u/sample-token"


def test_a_context_is_built_from_an_event_payload() -> None:
    data = {"before": {"tier": "A", "tags": ["new"]}, "after": {"tier": "B", "tags": ["new", "dormant"]}}
    ctx = build_context(
        "segment.changed",
        data,
        customer={"id": "u-1", "nickname": "阿花"},
        shop={"name": "店"},
        now=datetime(2026, 1, 1, tzinfo=ZoneInfo("Asia/Shanghai")),
    )
    assert ctx["segment"]["entered"] == ["dormant"] and ctx["segment"]["previous_tier"] == "A"
    assert ctx["customer"]["name"] == "阿花"
    coupon = build_context(
        "coupon.expiring",
        {
            "coupon_id": "c",
            "template_id": "t",
            "template_name": "券",
            "expires_at": "2026-11-30T23:59:59+08:00",
            "days_left": 2,
        },
        customer={},
        shop={},
        now=datetime(2026, 1, 1, tzinfo=ZoneInfo("Asia/Shanghai")),
    )
    assert coupon["coupon"]["expires_at"] == datetime.fromisoformat("2026-11-30T23:59:59+08:00")


def test_every_catalogue_variable_is_in_the_sample_context() -> None:
    for trigger in TRIGGERS:
        ctx = sample_context(trigger)
        for path in variables(trigger):
            value: object = ctx
            for part in path.split("."):
                assert isinstance(value, dict) and part in value, f"{trigger}: {path}"
                value = value[part]


@pytest.mark.parametrize("trigger", list(TRIGGERS))
@pytest.mark.parametrize("locale", LOCALES)
def test_every_triggers_example_validates_and_renders_on_the_sample_values(trigger: str, locale: str) -> None:
    example = TRIGGERS[trigger].examples[locale]
    assert validate(spec(channel="sms", trigger=trigger, locale=locale, text=example)) == []
    text = render_example(trigger, locale)
    assert text and "{{" not in text
    assert ("林晓" if locale == "zh-CN" else "Lin Xiao") in text


# ---------------------------------------------------------------- channel requirements


def test_an_email_needs_a_subject() -> None:
    assert "parts.subject" in problems(spec(channel="email", text="hi"))
    assert validate(spec(channel="email", subject="hi", html="<p>hi</p>")) == []


def test_an_sms_needs_text_or_a_provider_template() -> None:
    assert "parts.text" in problems(spec(channel="sms"))
    assert validate(spec(channel="sms", provider_template="SMS_123456", fields={"name": "{{ customer.name }}"})) == []
    assert "parts.fields.bad-key" in problems(spec(channel="sms", provider_template="SMS_1", fields={"bad-key": "x"}))


def test_a_wechat_message_needs_a_template_id_and_known_key_kinds() -> None:
    found = problems(spec(channel="wechat", fields={"title": "{{ coupon.name }}"}))
    assert "parts.provider_template" in found
    assert "parts.fields.title" in found
    assert "parts.fields" in problems(spec(channel="wechat", provider_template="t"))


def test_a_wechat_number_field_must_render_digits() -> None:
    s = spec(channel="wechat", provider_template="t", fields={"number1": "{{ coupon.name }}"})
    assert "parts.fields.number1" in problems(s)


def test_a_part_the_channel_does_not_have_is_refused() -> None:
    assert "parts.subject" in problems(spec(channel="sms", subject="s", text="t"))


def test_unknown_channel_locale_and_trigger_are_named() -> None:
    found = problems(spec(channel="fax", locale="fr", trigger="order.paid", text="x"))
    assert {"channel", "locale", "trigger"} <= set(found)


def test_every_channel_accepts_a_minimal_template() -> None:
    minimal = {
        "email": {"subject": "s", "text": "t"},
        "sms": {"text": "t"},
        "wechat": {"provider_template": "t", "fields": {"thing1": "x"}},
        "webhook": {"text": "t"},
        "console": {"text": "t"},
    }
    for channel in CHANNELS:
        assert validate(spec(channel=channel, **minimal[channel])) == [], channel


# ---------------------------------------------------------------- fingerprint


def test_the_fingerprint_is_stable_and_changes_with_the_content() -> None:
    a = spec(channel="sms", text="{{ coupon.name }}", fields={})
    assert fingerprint(a) == fingerprint(spec(channel="sms", text="{{ coupon.name }}"))
    assert len(fingerprint(a)) == 64
    assert fingerprint(a) != fingerprint(spec(channel="sms", text="{{ coupon.name }}!"))
    assert fingerprint(a) != fingerprint(spec(channel="sms", locale="en", text="{{ coupon.name }}"))


@given(st.dictionaries(st.sampled_from(["thing1", "time2", "amount3", "name4"]), st.text(max_size=20)))
def test_the_fingerprint_ignores_field_order(fields: dict[str, str]) -> None:
    reordered = dict(reversed(list(fields.items())))
    assert fingerprint(spec(channel="wechat", fields=fields)) == fingerprint(spec(channel="wechat", fields=reordered))
