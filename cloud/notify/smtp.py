"""E-mail through an SMTP relay (``smtplib`` in a worker thread: the event loop never blocks).

``security``: ``ssl`` (implicit TLS, port 465, what Chinese mail providers expect), ``starttls`` (587) or
``none`` (a local relay, and the tests' aiosmtpd). A 4xx answer or a dropped connection is a retry, a 5xx
(mailbox unknown, relaying denied, authentication failed) is permanent. ``Message-ID`` is derived from
the delivery key so a resend after a crash is recognisably the same message.
"""

from __future__ import annotations

import asyncio
import html
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import Literal

from cloud.notify.channel import Delivered, GiveUp, Notice, Outcome, Retry

Security = Literal["ssl", "starttls", "none"]


class SmtpEmail:
    name = "email"

    def __init__(
        self,
        *,
        host: str,
        sender: str,
        port: int = 465,
        security: Security = "ssl",
        username: str = "",
        password: str = "",
        timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._security = security
        self._user = username
        self._password = password
        self._timeout = timeout_s
        self._ssl = ssl_context

    def __repr__(self) -> str:
        return f"SmtpEmail(host={self._host!r}, port={self._port}, security={self._security!r})"

    def build(self, notice: Notice, to: str, *, key: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self._sender
        msg["To"] = to
        msg["Subject"] = notice.title
        msg["Date"] = formatdate(localtime=False)
        domain = self._sender.rpartition("@")[2] or "vigil.local"
        msg["Message-ID"] = f"<{key.replace('/', '.').replace(' ', '')}@{domain}>"
        msg.set_content(notice.plain_text())
        links = "".join(
            f'<p><a href="{html.escape(a.url)}">{html.escape(a.label)}</a></p>' for a in notice.actions
        )
        body = "".join(f"<p>{html.escape(line)}</p>" for line in notice.lines)
        hint = f"<p>{html.escape(notice.reply_hint)}</p>" if notice.reply_hint else ""
        msg.add_alternative(f"<h3>{html.escape(notice.title)}</h3>{body}{links}{hint}", subtype="html")
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        smtp: smtplib.SMTP
        if self._security == "ssl":
            smtp = smtplib.SMTP_SSL(self._host, self._port, timeout=self._timeout, context=self._ssl)
        else:
            smtp = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
        with smtp:
            if self._security == "starttls":
                smtp.starttls(context=self._ssl)
            if self._user:
                smtp.login(self._user, self._password)
            smtp.send_message(msg)

    async def send(self, notice: Notice, to: str, *, key: str) -> Outcome:
        msg = self.build(notice, to, key=key)
        try:
            await asyncio.to_thread(self._send_blocking, msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(400 <= c < 500 for c in codes):
                return Retry(f"SMTP recipient deferred ({codes})")
            return GiveUp(f"SMTP recipient refused ({codes})")
        except smtplib.SMTPResponseException as exc:
            what = f"SMTP {exc.smtp_code}: {exc.smtp_error[:120]!r}"
            return Retry(what) if 400 <= exc.smtp_code < 500 else GiveUp(what)
        except (smtplib.SMTPException, OSError) as exc:  # disconnects, timeouts, refused connections
            return Retry(f"SMTP connection failed ({type(exc).__name__})")
        return Delivered(str(msg["Message-ID"]))
