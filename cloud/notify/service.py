"""Assembly: the notification feature built from the cloud's state and the notify config, run in the app.

``NotifyService.build`` wires channels (from :class:`~cloud.notify.config.NotifyConfig`), contacts, the
outbox, the planner, the delivery worker and the two desks (responders, residents). The app keeps it
as ``app.state.notify`` and runs :meth:`NotifyService.run` as the ``notify-delivery`` background task.
``port`` connects actions to the incident loop and ``source`` feeds the loop's intents in; both default
to stand-ins until the loop is wired (``docs/notifications.md``).
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from prometheus_client import CollectorRegistry

from cloud.crypto import BlindIndex, SecretBox, load_or_create_key
from cloud.db import Database
from cloud.notify.actions import IncidentPort, NullIncidentPort, ResponderDesk
from cloud.notify.aliyun import AliyunRpc, AliyunSms, AliyunVoice
from cloud.notify.channel import Channel
from cloud.notify.config import NotifyConfig
from cloud.notify.contacts import Contacts
from cloud.notify.dingtalk import DingTalkRobot
from cloud.notify.family import CALL_TASK, CallTaskChannel, family_channels
from cloud.notify.inapp import InAppChannel
from cloud.notify.links import LinkSigner, derive_link_key
from cloud.notify.outbox import Outbox, RetryPolicy
from cloud.notify.photos import PhotoStore
from cloud.notify.planner import CALL_TAKER_ROLE, Planner
from cloud.notify.residents import ResidentDesk
from cloud.notify.smtp import SmtpEmail
from cloud.notify.tencent import TencentSms
from cloud.notify.webhook import Webhook
from cloud.notify.wecom import WeComApp, WeComRobot
from cloud.notify.worker import DeliveryWorker, IntentSource, NotifyMetrics
from firmware_bridge.kernel.clock import Clock

if TYPE_CHECKING:
    from cloud.loop.service import LoopService
    from cloud.loop.wiring import LoopSink


def build_channels(
    config: NotifyConfig, *, client: httpx.AsyncClient, db: Database, clock: Clock
) -> tuple[dict[str, Channel], dict[str, Channel]]:
    """``(by channel name, by robot/webhook name)`` for everything the config enables."""
    channels: dict[str, Channel] = {"inapp": InAppChannel(db, now=clock.now)}
    if config.wecom:
        w = config.wecom
        channels["wecom"] = WeComApp(
            corp_id=w.corp_id,
            corp_secret=w.corp_secret,
            agent_id=w.agent_id,
            client=client,
            api_url=w.api_url,
        )
    aliyun_sms = config.aliyun_sms
    if config.tencent_sms and (config.sms_provider == "tencent" or aliyun_sms is None):
        t = config.tencent_sms
        channels["sms"] = TencentSms(
            secret_id=t.secret_id,
            secret_key=t.secret_key,
            sdk_app_id=t.sdk_app_id,
            sign_name=t.sign_name,
            template_id=t.template_id,
            client=client,
            endpoint=t.endpoint,
            region=t.region,
        )
    elif aliyun_sms:
        rpc = AliyunRpc(
            access_key_id=aliyun_sms.access_key_id,
            access_key_secret=aliyun_sms.access_key_secret,
            endpoint=aliyun_sms.endpoint,
            client=client,
            region=aliyun_sms.region,
        )
        channels["sms"] = AliyunSms(
            rpc, sign_name=aliyun_sms.sign_name, template_code=aliyun_sms.template_code
        )
    if config.aliyun_voice:
        v = config.aliyun_voice
        rpc = AliyunRpc(
            access_key_id=v.access_key_id,
            access_key_secret=v.access_key_secret,
            endpoint=v.endpoint,
            client=client,
            region=v.region,
        )
        channels["voice"] = AliyunVoice(
            rpc, tts_code=v.tts_code, called_show_number=v.called_show_number, play_times=v.play_times
        )
    if config.smtp:
        m = config.smtp
        channels["email"] = SmtpEmail(
            host=m.host,
            port=m.port,
            sender=m.sender,
            security=m.security,
            username=m.username,
            password=m.password,
            timeout_s=config.http_timeout_s * 2,
        )
    channels.update(family_channels(config, client=client))  # the family's own templates (sms/voice)
    named: dict[str, Channel] = {}
    for name, robot in config.robots.items():
        if robot.kind == "dingtalk_robot":
            named[name] = DingTalkRobot(url=robot.url, secret=robot.secret, client=client)
        else:
            named[name] = WeComRobot(url=robot.url, client=client)
    for name, hook in config.webhooks.items():
        named[name] = Webhook(url=hook.url, secret=hook.secret, client=client)
    return channels, named


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The providers' TLS verification context (httpx's default: certifi's CA bundle, ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` honoured), built once per process: loading the bundle costs ~75 ms, which every app
    start paid again (each test's cloud too). An ``SSLContext`` is safe to share between clients."""
    return httpx.create_ssl_context(trust_env=True)


@dataclass
class NotifyService:
    config: NotifyConfig
    contacts: Contacts
    links: LinkSigner
    outbox: Outbox
    planner: Planner
    worker: DeliveryWorker
    responders: ResponderDesk
    residents: ResidentDesk
    photos: PhotoStore
    http: httpx.AsyncClient
    clock: Clock

    @classmethod
    def build(
        cls,
        *,
        db: Database,
        key_file: os.PathLike[str] | str,
        clock: Clock,
        registry: CollectorRegistry,
        config: NotifyConfig,
        port: IncidentPort | None = None,
        source: IntentSource | None = None,
        worker_id: str | None = None,
    ) -> NotifyService:
        key = load_or_create_key(Path(key_file))
        index = BlindIndex(key)  # hashes under the primary, looks up under every key of the ring
        box = SecretBox(key)
        port = port or NullIncidentPort()
        links = LinkSigner(derive_link_key(key), base_url=config.public_base_url, ttl_s=config.link_ttl_s)
        contacts = Contacts(db, box, index=index)
        outbox = Outbox(
            db,
            worker=worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
            policy=RetryPolicy(
                max_attempts=config.max_attempts,
                initial_s=config.backoff_initial_s,
                maximum_s=config.backoff_max_s,
            ),
            lease_s=config.lease_s,
            robot_limits={name: r.per_minute for name, r in config.robots.items()},
        )
        http = httpx.AsyncClient(
            timeout=config.http_timeout_s, headers={"User-Agent": "vigil-notify/1"}, verify=tls_context()
        )
        channels, named = build_channels(config, client=http, db=db, clock=clock)
        channels[CALL_TASK] = CallTaskChannel(
            db,
            on_duty=lambda incident, device, now: contacts.on_duty_users(
                CALL_TAKER_ROLE, incident, device, now
            ),
            now=clock.now,
        )
        planner = Planner(contacts, links, config)
        photos = PhotoStore(db, max_bytes=config.photo_max_bytes)
        worker = DeliveryWorker(
            outbox=outbox,
            planner=planner,
            contacts=contacts,
            channels=channels,
            named=named,
            clock=clock,
            metrics=NotifyMetrics(registry),
            poll_s=config.poll_s,
            batch_size=config.batch_size,
            send_timeout_s=config.http_timeout_s * 3,
            source=source,
        )
        return cls(
            config=config,
            contacts=contacts,
            links=links,
            outbox=outbox,
            planner=planner,
            worker=worker,
            responders=ResponderDesk(
                db, links=links, contacts=contacts, outbox=outbox, photos=photos, port=port
            ),
            residents=ResidentDesk(db, links=links, photos=photos, port=port, config=config, index=index),
            photos=photos,
            http=http,
            clock=clock,
        )

    def set_port(self, port: IncidentPort) -> None:
        """Connect actions to the incident loop (after both are built)."""
        self.responders.port = port
        self.residents.port = port

    def connect_loop(self, loop: LoopService, sink: LoopSink | None = None) -> None:
        """Consume the loop's ``notification_intents`` and act on its incidents (``cloud/loop``).

        With the loop's ``sink``, the worker wakes as soon as the loop has handled committed alerts
        (a fire alarm's page does not wait for the next poll).
        """
        from cloud.notify.loopbridge import LoopIntents, LoopPort, ReopenWatch

        self.set_port(LoopPort(loop, contacts=self.contacts, photos=self.photos))
        self.worker.source = LoopIntents(self.outbox.db, lease_s=self.config.lease_s)
        self.worker.reopens = ReopenWatch(self.outbox.db)
        if sink is not None:  # after each batch the loop's drain task handled (intents are waiting)
            sink.on_handled.append(self.worker.wake)

    async def run(self) -> None:
        """The ``notify-delivery`` background task (until cancelled; in-flight sends finish first)."""
        await self.worker.run()

    async def aclose(self) -> None:
        """Close the providers' HTTP connections (the app's shutdown)."""
        await self.http.aclose()
