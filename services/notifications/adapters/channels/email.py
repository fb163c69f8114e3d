"""Email over SMTP (aiosmtplib): one connection per batch, one transaction per message.

Replies are classified per message: 2xx sent, 4xx (greylisting, mailbox busy, rate limits) retry,
5xx failed with the reply code. If the connection cannot be made, or drops mid-batch, every
message not yet answered is "retry"."""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.headerregistry import Address
from email.message import EmailMessage

import aiosmtplib
from pydantic import Field, SecretStr, model_validator

from services.notifications.adapters.channels.base import (
    ChannelConfig,
    ChannelKind,
    Outgoing,
    SendResult,
    failed,
    network_retry,
    retry,
)

_QUEUE_ID = re.compile(r"queued as\s+<?([^\s>]+)", re.IGNORECASE)


class SmtpConfig(ChannelConfig):
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    use_tls: bool = False
    validate_certs: bool = True
    from_address: str = Field(min_length=3, pattern=r"^[^@\s]+@[^@\s]+$")
    from_name: str | None = None
    timeout: float = Field(default=30.0, gt=0, le=300)
    batch_size: int = Field(default=50, ge=1, le=500)

    @model_validator(mode="after")
    def _consistent(self) -> SmtpConfig:
        if self.starttls and self.use_tls:
            raise ValueError("starttls and use_tls exclude each other (use_tls is implicit TLS, port 465)")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class SmtpChannel:
    kind: ChannelKind = "email"
    provider: str = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.max_batch = config.batch_size
        self._from = Address(display_name=config.from_name or "", addr_spec=config.from_address)

    async def aclose(self) -> None:
        """Nothing held between batches: a connection lives for one send()."""

    async def send(self, batch: Sequence[Outgoing]) -> list[SendResult]:
        if not batch:
            return []
        c = self.config
        smtp = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            use_tls=c.use_tls,
            # False, not None: aiosmtplib would otherwise upgrade on its own when offered.
            start_tls=c.starttls,
            validate_certs=c.validate_certs,
            timeout=c.timeout,
            username=c.username,
            password=c.password.get_secret_value() if c.password else None,
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            return [failed(f"SMTP login refused: {exc.message}", code=str(exc.code))] * len(batch)
        except aiosmtplib.SMTPResponseException as exc:
            return [_by_reply(exc.code, exc.message)] * len(batch)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return [network_retry(exc)] * len(batch)

        results: list[SendResult] = []
        try:
            for msg in batch:
                try:
                    results.append(await self._send_one(smtp, msg))
                except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
                    # The connection is gone: this and every later message were not accepted.
                    results.extend([network_retry(exc)] * (len(batch) - len(results)))
                    return results
        finally:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()
        return results

    async def _send_one(self, smtp: aiosmtplib.SMTP, msg: Outgoing) -> SendResult:
        try:
            message = self._message(msg)
        except (ValueError, IndexError) as exc:  # e.g. a line break in an address or the subject
            return failed(f"cannot build the message: {exc}", code="invalid_message")
        try:
            errors, reply = await smtp.send_message(
                message, sender=self.config.from_address, recipients=[msg.recipient]
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return _by_reply(refused.code, refused.message)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            raise
        except aiosmtplib.SMTPResponseException as exc:  # MAIL FROM or DATA refused
            return _by_reply(exc.code, exc.message)
        except aiosmtplib.SMTPNotSupported as exc:  # e.g. a UTF-8 address without SMTPUTF8
            return failed(str(exc), code="not_supported")
        except aiosmtplib.SMTPException as exc:
            return network_retry(exc)
        if errors:
            response = next(iter(errors.values()))
            return _by_reply(response.code, response.message)
        found = _QUEUE_ID.search(reply)
        return SendResult("sent", provider_id=found.group(1) if found else None, detail=reply[:200])

    def _message(self, msg: Outgoing) -> EmailMessage:
        r = msg.rendered
        message = EmailMessage()
        message["Subject"] = r.subject or ""
        message["From"] = self._from
        message["To"] = msg.recipient
        message["Message-ID"] = f"<{msg.message_id}@fugou>"
        if r.unsubscribe_url:
            # RFC 8058 one-click unsubscribe: what Gmail and Yahoo ask of bulk senders.
            message["List-Unsubscribe"] = f"<{r.unsubscribe_url}>"
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        if r.text is not None or r.html is None:
            message.set_content(r.text or "")
            if r.html is not None:
                message.add_alternative(r.html, subtype="html")
        else:
            message.set_content(r.html, subtype="html")
        return message


def _by_reply(code: int, message: str) -> SendResult:
    # 5xx is permanent (RFC 5321); 4xx and anything odd (aiosmtplib uses -1) may pass next time.
    detail = f"{code} {message}".strip()[:300]
    return failed(detail, code=str(code)) if 500 <= code < 600 else retry(detail, code=str(code))
