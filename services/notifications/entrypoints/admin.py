"""The merchant's notifications administration (X-Api-Key): the policy that protects customers,
the provider behind each channel, templates (validated, versioned, previewed), the rules that turn
triggers into messages, campaigns, and the read side: messages, explain, the funnel, the console
channel's record, and a customer's consents. Thin: JSON in, a service-layer call, JSON out."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import Enum
from typing import Annotated, Any, Literal, cast, get_args
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifications.adapters.channels import CONFIG_MODELS, RECEIPT_PROVIDERS, Outgoing
from services.notifications.adapters.channels import Rendered as ChannelRendered
from services.notifications.adapters.tables import channel_configs, consents, messages
from services.notifications.domain import templates as dt
from services.notifications.domain.contacts import ADDRESS_FIELD, InvalidContact, callback_token, normalize_address
from services.notifications.service_layer import campaigns as campaigns_svc
from services.notifications.service_layer import config, profiles, reads
from services.notifications.service_layer import templates as templates_svc
from services.notifications.service_layer.config import (
    Channel,
    ChannelSettings,
    Key,
    NotifyRule,
    Policy,
    RuleFields,
    Strict,
)
from services.notifications.service_layer.state import Notifier, notifier_for
from shared import clock
from shared.events import Id
from shared.tenancy import Merchant
from shared.web import ApiError, merchant_dependency, runtime_of, session_dependency

SERVICE = "notifications"
Session = Annotated[AsyncSession, Depends(session_dependency(SERVICE))]
AdminMerchant = Annotated[Merchant, Depends(merchant_dependency(SERVICE))]
TemplateKey = Annotated[str, Path(min_length=1, max_length=64)]
RuleId = Annotated[str, Path(min_length=1, max_length=64)]
CampaignId = Annotated[str, Path(min_length=1, max_length=64)]
MessageId = Annotated[str, Path(min_length=1, max_length=64)]
CustomerId = Annotated[Id, Path(description="The shop's customer id.")]
Locale = Literal["zh-CN", "en"]

router = APIRouter()
# OpenAPI tags, typed as FastAPI takes them.
SETTINGS: list[str | Enum] = ["notifications: settings"]
TEMPLATES: list[str | Enum] = ["notifications: templates"]
RULES: list[str | Enum] = ["notifications: rules"]
CAMPAIGNS: list[str | Enum] = ["notifications: campaigns"]
MESSAGES: list[str | Enum] = ["notifications: messages"]
CONSENTS: list[str | Enum] = ["notifications: consents"]


def refused(problems: list[tuple[str, str]]) -> RequestValidationError:
    """A 422 naming every field at fault (``error.fields``), in the shape of any validation error."""
    return RequestValidationError(
        [{"loc": tuple(field.split(".")), "msg": message, "type": "value_error"} for field, message in problems]
    )


def _problems(e: templates_svc.TemplateRefused) -> RequestValidationError:
    return refused([(f"body.{p.field}", p.message) for p in e.problems])


# ---------------------------------------------------------------- policy


@router.get(
    "/v1/notifications/policy",
    response_model=Policy,
    tags=SETTINGS,
    summary="The policy in force: caps, quiet hours, consent, retries (defaults until saved)",
)
async def get_policy(merchant: AdminMerchant, session: Session) -> Policy:
    return await config.policy_of(session, merchant.merchant_id)


@router.put(
    "/v1/notifications/policy",
    response_model=Policy,
    tags=SETTINGS,
    summary="Replace the policy (it applies to every message decided from now on)",
    responses={422: {"description": "a setting, and why"}},
)
async def put_policy(body: Policy, merchant: AdminMerchant, session: Session) -> Policy:
    async with session.begin():
        await config.save_policy(session, merchant.merchant_id, body, clock.now())
    return body


# ---------------------------------------------------------------- channels


class ChannelView(BaseModel):
    channel: Channel
    provider: str
    config: dict[str, Any] = Field(description='The provider\'s settings; secrets show as "***".')
    rate_per_s: int
    burst: int
    updated_at: datetime


def _secret_fields(provider: str) -> set[str]:
    model = CONFIG_MODELS.get(provider)
    if model is None:
        return set()
    return {
        name
        for name, f in model.model_fields.items()
        if f.annotation is SecretStr or SecretStr in get_args(f.annotation)
    }


def _channel_view(row: Any) -> ChannelView:
    body = orjson.loads(row.config)
    for name in _secret_fields(row.provider) & set(body):
        if body[name]:
            body[name] = "***"
    return ChannelView(
        channel=row.channel,
        provider=row.provider,
        config=body,
        rate_per_s=row.rate_per_s,
        burst=row.burst,
        updated_at=row.updated_at,
    )


async def _channel_rows(session: AsyncSession, merchant_id: str, channel: str | None = None) -> list[Any]:
    c = channel_configs.c
    q = select(channel_configs).where(c.merchant_id == merchant_id)
    if channel is not None:
        q = q.where(c.channel == channel)
    return list(await session.execute(q.order_by(c.channel)))


def running_notifier(request: Request) -> Notifier | None:
    """This process's Notifier when it runs the dispatcher (an API-only process has none: asking
    notifier_for there would make one, with an HTTP pool, that nothing ever closes)."""
    rt = runtime_of(request, SERVICE)
    return notifier_for(rt) if rt.consumer is not None else None


def _refresh_route(request: Request, merchant_id: str, channel: str) -> None:
    """This process's dispatcher rebuilds the channel on its next send (others within seconds)."""
    notifier = running_notifier(request)
    route = notifier.routes.get((merchant_id, channel)) if notifier is not None else None
    if route is not None:
        route.built_at = float("-inf")


@router.put(
    "/v1/notifications/channels/{channel}",
    response_model=ChannelView,
    tags=SETTINGS,
    summary="Set the provider of a channel (validated now, used by the dispatchers within seconds)",
    responses={422: {"description": "a provider setting, and why (e.g. body.config.app_id)"}},
)
async def put_channel(
    channel: Channel, body: ChannelSettings, request: Request, merchant: AdminMerchant, session: Session
) -> ChannelView:
    try:
        async with session.begin():
            await config.save_channel(session, merchant.merchant_id, channel, body, clock.now())
    except ValidationError as e:  # the provider's own settings model
        raise refused(
            [
                (".".join(("body", "config", *(str(p) for p in err["loc"]))), err["msg"])
                for err in e.errors(include_url=False)
            ]
        ) from None
    except ValueError as e:  # a provider of another channel kind
        raise ApiError(422, "wrong_provider", str(e), field="body.provider") from None
    _refresh_route(request, merchant.merchant_id, channel)
    [row] = await _channel_rows(session, merchant.merchant_id, channel)
    return _channel_view(row)


@router.get(
    "/v1/notifications/channels",
    response_model=list[ChannelView],
    tags=SETTINGS,
    summary="The configured providers (a channel not listed: messages are recorded by the console)",
)
async def list_channels(merchant: AdminMerchant, session: Session) -> list[ChannelView]:
    return [_channel_view(r) for r in await _channel_rows(session, merchant.merchant_id)]


@router.delete(
    "/v1/notifications/channels/{channel}",
    status_code=204,
    tags=SETTINGS,
    summary="Remove a channel's provider (back to the default)",
)
async def delete_channel(channel: Channel, request: Request, merchant: AdminMerchant, session: Session) -> None:
    c = channel_configs.c
    async with session.begin():
        # A DELETE runs on a cursor: its result is a CursorResult (AsyncSession.execute says Result).
        res = cast(
            "CursorResult[Any]",
            await session.execute(
                delete(channel_configs).where(c.merchant_id == merchant.merchant_id, c.channel == channel)
            ),
        )
    if not res.rowcount:
        raise ApiError(404, "not_found", f"no provider configured for {channel}", field="path.channel")
    _refresh_route(request, merchant.merchant_id, channel)


# ---------------------------------------------------------------- templates


class Parts(Strict):
    subject: str | None = Field(None, max_length=1_000, description="email (webhook, console)")
    text: str | None = Field(None, max_length=20_000, description="sms, email (webhook, console)")
    html: str | None = Field(None, max_length=200_000, description="email, autoescaped (webhook, console)")
    fields: dict[str, Annotated[str, Field(max_length=2_000)]] = Field(
        default_factory=dict,
        max_length=50,
        description="wechat keys (thing1, time2…) or an SMS provider template's parameters",
    )
    provider_template: str | None = Field(None, max_length=128, description="wechat template id, SMS template code")
    page: str | None = Field(None, max_length=1_000, description="the mini-program page a WeChat message opens")

    def domain(self) -> dt.TemplateParts:
        return dt.TemplateParts(
            subject=self.subject,
            text=self.text,
            html=self.html,
            fields=dict(self.fields),
            provider_template=self.provider_template,
            page=self.page,
        )


Vars = Annotated[
    list[Annotated[str, Field(max_length=70)]],
    Field(max_length=50, description="Variables of the template's own (a campaign's vars), read as vars.<name>"),
]


class TemplateBody(Strict):
    key: Key
    channel: str = Field(description="wechat, sms, email, webhook or console")
    locale: str = Field("zh-CN", description="zh-CN or en")
    trigger: str = Field(description="See GET /v1/notifications/triggers")
    parts: Parts
    vars: Vars = Field(default_factory=list)

    def spec(self) -> dt.TemplateSpec:
        return dt.TemplateSpec(self.channel, self.locale, self.trigger, self.parts.domain())


class TemplateSaved(BaseModel):
    key: str
    version: int
    created: bool = Field(description="false: the content was the version in force already")


class TemplateView(BaseModel):
    key: str
    version: int
    channel: str
    locale: str
    trigger: str
    parts: Parts
    vars: list[str]
    created_at: datetime


def _template_view(st: templates_svc.StoredTemplate) -> TemplateView:
    p = st.spec.parts
    return TemplateView(
        key=st.key,
        version=st.version,
        channel=st.spec.channel,
        locale=st.spec.locale,
        trigger=st.spec.trigger,
        vars=list(st.vars),
        created_at=st.created_at,
        parts=Parts(
            subject=p.subject,
            text=p.text,
            html=p.html,
            fields=dict(p.fields),
            provider_template=p.provider_template,
            page=p.page,
        ),
    )


@router.post(
    "/v1/notifications/templates",
    response_model=TemplateSaved,
    status_code=201,
    tags=TEMPLATES,
    summary="Save a template: a new version when its content changed (200 when it did not)",
    responses={
        200: {"description": "the same content as the version in force: nothing new"},
        422: {"description": "every problem, each naming its part (body.parts.text…)"},
    },
)
async def save_template(
    body: TemplateBody, response: Response, merchant: AdminMerchant, session: Session
) -> TemplateSaved:
    try:
        async with session.begin():
            st, created = await templates_svc.save(
                session, merchant.merchant_id, body.key, body.spec(), list(body.vars), clock.now()
            )
    except templates_svc.TemplateRefused as e:
        raise _problems(e) from None
    if not created:
        response.status_code = 200
    return TemplateSaved(key=st.key, version=st.version, created=created)


@router.get(
    "/v1/notifications/templates",
    response_model=list[TemplateView],
    tags=TEMPLATES,
    summary="The version in force of every template",
)
async def list_templates(merchant: AdminMerchant, session: Session) -> list[TemplateView]:
    return [_template_view(st) for st in await templates_svc.listing(session, merchant.merchant_id)]


@router.get(
    "/v1/notifications/templates/{key}",
    response_model=list[TemplateView],
    tags=TEMPLATES,
    summary="Every version of a template, newest first",
)
async def template_versions(key: TemplateKey, merchant: AdminMerchant, session: Session) -> list[TemplateView]:
    found = await templates_svc.versions(session, merchant.merchant_id, key)
    if not found:
        raise ApiError(404, "not_found", f"no template {key!r}", field="path.key")
    return [_template_view(st) for st in found]


@router.get(
    "/v1/notifications/templates/{key}/versions/{version}",
    response_model=TemplateView,
    tags=TEMPLATES,
    summary="One version of a template",
)
async def template_version(
    key: TemplateKey, version: Annotated[int, Path(ge=1)], merchant: AdminMerchant, session: Session
) -> TemplateView:
    found = await templates_svc.versions(session, merchant.merchant_id, key, version)
    if not found:
        raise ApiError(404, "not_found", f"no version {version} of template {key!r}", field="path.version")
    return _template_view(found[0])


class PreviewBody(Strict):
    channel: str
    locale: str = "zh-CN"
    trigger: str
    parts: Parts
    vars: Vars = Field(default_factory=list)
    variables: dict[str, Any] = Field(
        default_factory=dict,
        max_length=200,
        description='Values instead of the samples, by dotted name: {"coupon.name": "新人券", "vars.headline": …}',
    )


class Rendered(BaseModel):
    subject: str | None
    text: str | None
    html: str | None
    fields: dict[str, str]
    provider_template: str | None
    page: str | None
    unsubscribe_url: str | None


class PreviewView(BaseModel):
    rendered: Rendered
    context: dict[str, Any] = Field(description="The variables it was rendered with")


@router.post(
    "/v1/notifications/templates/preview",
    response_model=PreviewView,
    tags=TEMPLATES,
    summary="Render a template on the trigger's sample values (or the values given)",
    responses={422: {"description": "every problem, each naming its part"}},
)
async def preview(body: PreviewBody, merchant: AdminMerchant) -> PreviewView:
    spec = dt.TemplateSpec(body.channel, body.locale, body.trigger, body.parts.domain())
    try:
        parts, ctx = templates_svc.preview(spec, list(body.vars), body.variables)
    except templates_svc.TemplateRefused as e:
        raise _problems(e) from None
    except dt.RenderError as e:
        raise refused([(f"body.{e.field}", f"fails on the values given: {e.message}")]) from None
    return PreviewView(
        rendered=Rendered(
            subject=parts.subject,
            text=parts.text,
            html=parts.html,
            fields=dict(parts.fields),
            provider_template=parts.provider_template,
            page=parts.page,
            unsubscribe_url=parts.unsubscribe_url,
        ),
        context=ctx,
    )


class TestSendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: Key = Field(description="A saved template's key (its version in force is sent)")
    to: str = Field(
        min_length=1,
        max_length=320,
        description="A phone number (SMS), an email address, a WeChat openid; ignored for webhook and console",
    )
    variables: dict[str, Any] = Field(
        default_factory=dict, description='Override sample values, e.g. {"coupon.name": "新人券"}'
    )


class TestSendView(BaseModel):
    outcome: Literal["sent", "delivered", "retry", "failed"]
    provider: str
    provider_id: str | None
    code: str | None
    detail: str | None
    rendered: Rendered


@router.post(
    "/v1/notifications/test-send",
    response_model=TestSendView,
    tags=TEMPLATES,
    summary="Send a saved template, on its sample values, to an address of yours through the provider "
    "configured for its channel (no policy applies: this is the merchant testing)",
    responses={
        404: {"description": "no such template"},
        422: {"description": "an invalid phone number, email or openid (body.to)"},
    },
)
async def test_send(body: TestSendBody, request: Request, merchant: AdminMerchant, session: Session) -> TestSendView:
    found = (await templates_svc.latest(session, merchant.merchant_id, [body.template])).get(body.template)
    if found is None:
        raise ApiError(404, "not_found", f"no template {body.template!r}", field="body.template")
    channel = found.spec.channel
    to = body.to
    if channel in ADDRESS_FIELD:
        try:
            to = normalize_address(channel, body.to)
        except InvalidContact as e:
            raise ApiError(422, "invalid_contact", f"{body.to!r}: {e.reason}", field="body.to") from None
    try:
        parts, _ = templates_svc.preview(found.spec, list(found.vars), body.variables, merchant.name)
    except dt.RenderError as e:
        raise refused([("body.variables", f"{e.field} fails on the values given: {e.message}")]) from None
    rendered = ChannelRendered(
        subject=parts.subject,
        text=parts.text,
        html=parts.html,
        fields=parts.fields,
        provider_template=parts.provider_template,
        page=parts.page,
    )
    notifier = Notifier(runtime_of(request, SERVICE).settings)
    try:
        route = await notifier.route(session, merchant.merchant_id, channel)
        if route.channel is None:
            raise ApiError(409, "not_configured", f"no {channel} provider configured", field="body.template")
        [res] = await route.channel.send([Outgoing(f"test-{uuid.uuid4()}", merchant.merchant_id, None, to, rendered)])
    finally:
        await notifier.aclose()
    return TestSendView(
        outcome=res.outcome,
        provider=route.provider,
        provider_id=res.provider_id,
        code=res.code,
        detail=res.detail,
        rendered=Rendered(
            subject=parts.subject,
            text=parts.text,
            html=parts.html,
            fields=dict(parts.fields),
            provider_template=parts.provider_template,
            page=parts.page,
            unsubscribe_url=None,
        ),
    )


class TriggerExample(BaseModel):
    source: str
    rendered: str


class TriggerView(BaseModel):
    name: str
    description: str
    purpose: Literal["transactional", "marketing"] = Field(description="The default; a rule may say otherwise")
    for_rules: bool = Field(description="false: templates only (campaigns)")
    variables: list[str]
    examples: dict[str, TriggerExample] = Field(description="By locale")


@router.get(
    "/v1/notifications/triggers",
    response_model=list[TriggerView],
    tags=TEMPLATES,
    summary="The trigger catalogue: what each trigger's templates may read, with examples",
)
async def triggers(merchant: AdminMerchant) -> list[TriggerView]:
    return [
        TriggerView(
            name=t.name,
            description=t.description,
            purpose=t.purpose,
            for_rules=t.name != "campaign",
            variables=sorted(dt.variables(t.name)),
            examples={
                loc: TriggerExample(source=src, rendered=dt.render_example(t.name, loc))
                for loc, src in t.examples.items()
            },
        )
        for t in dt.TRIGGERS.values()
    ]


# ---------------------------------------------------------------- rules


class RuleBody(RuleFields):
    rule_id: Key | None = Field(None, description="Omitted: the path's; given: must equal it")


@router.put(
    "/v1/notifications/rules/{rule_id}",
    response_model=NotifyRule,
    tags=RULES,
    summary="Create or replace a rule (its templates may be saved later: explain says template_missing)",
    responses={422: {"description": "a field, and why"}},
)
async def put_rule(rule_id: RuleId, body: RuleBody, merchant: AdminMerchant, session: Session) -> NotifyRule:
    if body.rule_id is not None and body.rule_id != rule_id:
        raise ApiError(
            422,
            "validation_error",
            f"rule_id {body.rule_id!r} differs from the path's {rule_id!r}",
            field="body.rule_id",
        )
    try:
        rule = NotifyRule.model_validate({**body.model_dump(), "rule_id": rule_id})
    except ValidationError as e:  # the path's rule_id is not a key
        raise ApiError(422, "validation_error", e.errors(include_url=False)[0]["msg"], field="path.rule_id") from None
    async with session.begin():
        await config.save_rule(session, merchant.merchant_id, rule, clock.now())
    return rule


@router.get("/v1/notifications/rules", response_model=list[NotifyRule], tags=RULES, summary="The merchant's rules")
async def list_rules(merchant: AdminMerchant, session: Session) -> list[NotifyRule]:
    return await config.list_rules(session, merchant.merchant_id)


@router.delete(
    "/v1/notifications/rules/{rule_id}", status_code=204, tags=RULES, summary="Delete a rule (its messages stay)"
)
async def delete_rule(rule_id: RuleId, merchant: AdminMerchant, session: Session) -> None:
    async with session.begin():
        found = await config.delete_rule(session, merchant.merchant_id, rule_id)
    if not found:
        raise ApiError(404, "not_found", f"no rule {rule_id!r}", field="path.rule_id")


# ---------------------------------------------------------------- campaigns


class CampaignCreated(BaseModel):
    campaign_id: str
    status: str


class CampaignView(BaseModel):
    campaign_id: str
    status: str = Field(description="scheduled, running, paused, cancelled, done or failed")
    spec: campaigns_svc.CampaignSpec
    error: str | None = Field(None, description="Why it failed (an unknown audience…)")
    scheduled_at: datetime
    enqueued: int = Field(description="Customers walked so far (each a message, queued or skipped)")
    progress: dict[str, int] = Field(description="Its messages by status")
    created_at: datetime
    updated_at: datetime


async def _check_campaign(session: AsyncSession, merchant_id: str, spec: campaigns_svc.CampaignSpec) -> None:
    """What would make every message of the campaign fail is refused now, naming the field."""
    found = await templates_svc.latest(session, merchant_id, [c.template for c in spec.channels])
    for i, choice in enumerate(spec.channels):
        field = f"body.channels.{i}.template"
        st = found.get(choice.template)
        if st is None:
            raise ApiError(422, "unknown_template", f"no template {choice.template!r}", field=field)
        if st.spec.channel != choice.channel:
            raise ApiError(
                422,
                "wrong_template",
                f"template {choice.template!r} is for {st.spec.channel}, not {choice.channel}",
                field=field,
            )
        if st.spec.trigger != "campaign":
            raise ApiError(
                422,
                "wrong_template",
                f"template {choice.template!r} answers {st.spec.trigger}; "
                "a campaign needs a template for the campaign trigger",
                field=field,
            )
        missing = [v.removeprefix("vars.") for v in st.vars if v.removeprefix("vars.") not in spec.vars]
        if missing:
            raise ApiError(
                422,
                "missing_vars",
                f"template {choice.template!r} reads vars {', '.join(missing)}: give their values",
                field="body.vars",
            )


@router.post(
    "/v1/notifications/campaigns",
    response_model=CampaignCreated,
    status_code=201,
    tags=CAMPAIGNS,
    summary="Start (or schedule) a campaign: one message to every member of an audience",
    responses={422: {"description": "a field, and why"}},
)
async def create_campaign(
    body: campaigns_svc.CampaignSpec, merchant: AdminMerchant, session: Session
) -> CampaignCreated:
    async with session.begin():
        await _check_campaign(session, merchant.merchant_id, body)
        campaign_id = await campaigns_svc.create(session, merchant.merchant_id, body, clock.now())
    return CampaignCreated(campaign_id=campaign_id, status="scheduled")


async def _campaign(session: AsyncSession, merchant_id: str, campaign_id: str) -> Any:
    row = await campaigns_svc.get(session, merchant_id, campaign_id)
    if row is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id!r}", field="path.campaign_id")
    return row


@router.get(
    "/v1/notifications/campaigns/{campaign_id}",
    response_model=CampaignView,
    tags=CAMPAIGNS,
    summary="A campaign: its spec, status and progress",
)
async def get_campaign(campaign_id: CampaignId, merchant: AdminMerchant, session: Session) -> CampaignView:
    row = await _campaign(session, merchant.merchant_id, campaign_id)
    return CampaignView(
        campaign_id=row.campaign_id,
        status=row.status,
        spec=campaigns_svc.CampaignSpec.model_validate_json(row.body),
        error=row.error,
        scheduled_at=row.scheduled_at,
        enqueued=row.enqueued,
        progress=await campaigns_svc.progress(session, merchant.merchant_id, campaign_id),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@router.post(
    "/v1/notifications/campaigns/{campaign_id}/{action}",
    response_model=CampaignCreated,
    tags=CAMPAIGNS,
    summary="Pause, resume or cancel a campaign",
    responses={
        404: {"description": "no such campaign"},
        409: {"description": "its status does not allow it (resume a cancelled campaign…)"},
    },
)
async def campaign_action(
    campaign_id: CampaignId,
    action: Literal["pause", "resume", "cancel"],
    request: Request,
    merchant: AdminMerchant,
    session: Session,
) -> CampaignCreated:
    try:
        async with session.begin():
            status = await campaigns_svc.set_status(session, merchant.merchant_id, campaign_id, action, clock.now())
    except campaigns_svc.Conflict as e:
        raise ApiError(409, "conflict", str(e), field="path.action") from None
    if status is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id!r}", field="path.campaign_id")
    if action == "resume" and (notifier := running_notifier(request)) is not None:
        notifier.wake.set()  # its paused messages are due now
    return CampaignCreated(campaign_id=campaign_id, status=status)


# ---------------------------------------------------------------- messages


class TemplateRef(BaseModel):
    key: str
    version: int


class Step(BaseModel):
    at: datetime
    status: str
    reason: str | None
    detail: Any


class MessageView(BaseModel):
    message_id: str
    customer_id: str
    trigger: str
    trigger_key: str = Field(description="The event id, campaign id or clock key")
    rule_id: str | None
    campaign_id: str | None
    channel: str
    template: TemplateRef
    purpose: str
    status: str = Field(description="queued, held, sending, sent, delivered, failed, dead, skipped, paused, cancelled")
    reason: str | None
    attempts: int
    provider: str | None
    provider_id: str | None
    recipient: str | None
    due_at: datetime | None
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    content: dict[str, Any] | None = Field(description="What was sent (rendered)")
    steps: list[Step] | None = Field(
        None, description="What happened to it, step by step, with the reasons (one message and explain; not in lists)"
    )
    why: str = Field(description="One line for a person")


def _views(rows: list[Any], locale: str = "zh-CN") -> list[MessageView]:
    return [MessageView.model_validate(reads.message_view(r, None, locale)) for r in rows]


Limit = Annotated[int, Query(ge=1, le=200)]


@router.get(
    "/v1/notifications/messages", response_model=list[MessageView], tags=MESSAGES, summary="Messages, newest first"
)
async def list_messages(
    merchant: AdminMerchant,
    session: Session,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    status: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    channel: Channel | None = None,
    campaign_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    rule_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    before: Annotated[AwareDatetime | None, Query(description="Older than this")] = None,
    limit: Limit = 50,
) -> list[MessageView]:
    return _views(
        await reads.listing(
            session,
            merchant.merchant_id,
            customer_id=customer_id,
            status=status,
            channel=channel,
            campaign_id=campaign_id,
            rule_id=rule_id,
            limit=limit,
            before=before,
        )
    )


@router.get(
    "/v1/notifications/messages/{message_id}",
    response_model=MessageView,
    tags=MESSAGES,
    summary="One message, with every step and its reason",
)
async def get_message(
    message_id: MessageId, merchant: AdminMerchant, session: Session, locale: Locale = "zh-CN"
) -> MessageView:
    found = await reads.one(session, merchant.merchant_id, message_id)
    if found is None:
        raise ApiError(404, "not_found", f"no message {message_id!r}", field="path.message_id")
    row, log = found
    return MessageView.model_validate({"steps": [], **reads.message_view(row, log, locale)})


class ExplainView(BaseModel):
    customer_id: str
    trigger: str | None
    messages: list[MessageView] = Field(description="Every message considered, newest first, each with why")
    note: str | None = None


_NO_MESSAGE = {
    "zh-CN": "没有规则为这个触发生成消息（没有匹配的启用规则，或事件尚未处理）",
    "en": "no rule produced a message for this trigger (no active rule matched, or the event has not "
    "been processed yet)",
}


@router.get(
    "/v1/notifications/explain",
    response_model=ExplainView,
    tags=MESSAGES,
    summary="Why a customer was or was not messaged (for one trigger: an event id or campaign id)",
)
async def explain(
    merchant: AdminMerchant,
    session: Session,
    customer_id: Annotated[str, Query(min_length=1, max_length=128)],
    trigger: Annotated[
        str | None, Query(min_length=1, max_length=200, description="An event id or a campaign id")
    ] = None,
    locale: Locale = "zh-CN",
) -> ExplainView:
    found = await reads.explain(session, merchant.merchant_id, customer_id, trigger, locale)
    return ExplainView(
        customer_id=customer_id,
        trigger=trigger,
        messages=[MessageView.model_validate({"steps": [], **m}) for m in found],
        note=None if found else _NO_MESSAGE[locale],
    )


class FunnelView(BaseModel):
    total: int
    queued: int
    held: int
    sent: int = Field(description="Handed to a provider (delivered included)")
    delivered: int
    failed: int
    skipped: int
    paused: int
    cancelled: int
    by_status: dict[str, int]
    reasons: dict[str, dict[str, int]] = Field(description="Of the skipped, held, failed and dead: by reason")


class CallbacksView(BaseModel):
    receipts: dict[str, str] = Field(description="Per provider: the delivery-report URL to give it")
    sms_replies: str = Field(description="The URL for replies to the merchant's SMS (opt-out words)")


@router.get(
    "/v1/notifications/callbacks",
    response_model=CallbacksView,
    tags=SETTINGS,
    summary="The URLs to configure at the providers (they carry this merchant's callback token)",
)
async def callbacks(request: Request, merchant: AdminMerchant) -> CallbacksView:
    base = runtime_of(request, SERVICE).settings.public_url.rstrip("/")
    q = urlencode(
        {
            "merchant_id": merchant.merchant_id,
            "token": callback_token(merchant.jwt_secret.encode(), merchant.merchant_id),
        }
    )
    return CallbacksView(
        receipts={p: f"{base}/v1/notifications/receipts/{p}?{q}" for p in RECEIPT_PROVIDERS},
        sms_replies=f"{base}/v1/notifications/sms/replies?{q}",
    )


@router.get(
    "/v1/notifications/funnel",
    response_model=FunnelView,
    tags=MESSAGES,
    summary="Queued → sent → delivered, and what the policy held back, by reason",
)
async def funnel(
    merchant: AdminMerchant,
    session: Session,
    since: Annotated[AwareDatetime | None, Query(description="Messages created since")] = None,
    days: Annotated[
        int | None,
        Query(
            ge=1, le=3660, description="Messages created in the last N days, by the service's clock (not with since)"
        ),
    ] = None,
    campaign_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> FunnelView:
    if days is not None:
        if since is not None:
            raise ApiError(422, "invalid_query", "give since or days, not both", field="query.days")
        since = clock.now() - timedelta(days=days)
    return FunnelView.model_validate(await reads.funnel(session, merchant.merchant_id, since, campaign_id))


@router.get(
    "/v1/notifications/console",
    response_model=list[MessageView],
    tags=MESSAGES,
    summary="What the console channel recorded (the embedded default: no provider configured)",
)
async def console(
    merchant: AdminMerchant,
    session: Session,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    limit: Limit = 50,
) -> list[MessageView]:
    m = messages.c
    q = select(messages).where(m.merchant_id == merchant.merchant_id, m.provider == "console")
    if customer_id is not None:
        q = q.where(m.customer_id == customer_id)
    return _views(list(await session.execute(q.order_by(m.created_at.desc(), m.message_id.desc()).limit(limit))))


# ---------------------------------------------------------------- consents (also the customer's own: public.py)

ConsentState = Literal["granted", "denied"]


class ConsentsBody(Strict):
    sms: ConsentState | None = None
    email: ConsentState | None = None
    wechat: ConsentState | None = None

    def given(self) -> dict[str, str]:
        return {ch: state for ch, state in self.model_dump().items() if state is not None}


class ConsentView(BaseModel):
    state: ConsentState
    source: str = Field(description="event, api, customer, sms_reply, unsubscribe_link")
    updated_at: datetime


class ConsentsView(BaseModel):
    customer_id: str
    consents: dict[str, ConsentView] = Field(description="By channel; a channel never stated is absent")


async def read_consents(session: AsyncSession, merchant_id: str, customer_id: str) -> ConsentsView:
    k = consents.c
    rows = await session.execute(
        select(k.channel, k.state, k.source, k.updated_at)
        .where(k.merchant_id == merchant_id, k.customer_id == customer_id)
        .order_by(k.channel)
    )
    return ConsentsView(
        customer_id=customer_id,
        consents={
            r.channel: ConsentView(state=r.state, source=r.source, updated_at=r.updated_at)
            for r in rows
            if r.channel in ADDRESS_FIELD and r.state in ("granted", "denied")
        },
    )


async def write_consents(
    session: AsyncSession, merchant_id: str, customer_id: str, body: ConsentsBody, source: str
) -> ConsentsView:
    """Grants are recorded; a denial is an opt-out (its waiting messages on that channel are skipped)."""
    given = body.given()
    if not given:
        raise ApiError(422, "validation_error", "state at least one channel: sms, email or wechat", field="body")
    at = clock.now()
    async with session.begin():
        granted = [(merchant_id, customer_id, ch, "granted", source, at) for ch, s in given.items() if s == "granted"]
        if granted:
            await profiles.set_consents(session, granted)
        for ch in (ch for ch, s in given.items() if s == "denied"):
            await reads.opt_out(session, merchant_id, [customer_id], ch, source, at)
    return await read_consents(session, merchant_id, customer_id)


@router.get(
    "/v1/customers/{customer_id}/consents",
    response_model=ConsentsView,
    tags=CONSENTS,
    summary="A customer's consents per channel",
)
async def get_consents(customer_id: CustomerId, merchant: AdminMerchant, session: Session) -> ConsentsView:
    return await read_consents(session, merchant.merchant_id, customer_id)


@router.put(
    "/v1/customers/{customer_id}/consents",
    response_model=ConsentsView,
    tags=CONSENTS,
    summary="Record a customer's consents (denied: an opt-out; waiting messages on it are skipped)",
)
async def put_consents(
    customer_id: CustomerId, body: ConsentsBody, merchant: AdminMerchant, session: Session
) -> ConsentsView:
    return await write_consents(session, merchant.merchant_id, customer_id, body, "api")
