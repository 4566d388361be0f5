"""``vigil gateway status``: tell an installer, in plain words, what is wrong with this gateway.

It reads the running daemon's Prometheus endpoint; when the daemon is down it reads the outbox file
instead (queue depth, oldest record, drops, when the cloud was last reachable). Every finding is one
sentence with the number that proves it and what to check: "CRC errors on serial:/dev/ttyUSB0 (3.1 % of
frames): check the baud rate, the cable and its ground" rather than a counter name.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edge.quarantine import unknown_device_report
from firmware_bridge.kernel import locale

#: reject reason -> what an installer should check
ADVICE: dict[str, str] = {
    "crc": "CRC errors: check the baud rate, the cable and its ground, and interference near the radio",
    "escape": "broken SLIP escapes: line noise or a wrong baud rate",
    "short": "truncated frames: line noise, a wrong baud rate or a radio resetting mid-frame",
    "oversize": "overlong frames: a wrong baud rate or a device not speaking Vigil framing",
    "length": "payloads of the wrong length: device firmware does not match this gateway version",
    "version": "unknown payload version: device firmware is newer than this gateway",
    "kind": "unknown device kind code: a foreign device or newer firmware",
    "range": "out-of-range header values: a faulty device",
    "mic": "LoRaWAN MIC failures: the session keys in devices.csv do not match the devices",
    "unknown_dev_addr": "LoRaWAN frames from DevAddrs not in devices.csv",
    "replay": "replayed LoRaWAN frame counters: a duplicate path, or a device that rebooted (ABP reset)",
    "duplicate": "duplicate frames (heard twice): harmless, they are stored once",
    "unknown_device": "frames from devices not in devices.csv were refused (accept_unknown_devices = false)",
    "queue_full": "the frame queue overflowed: the gateway cannot keep up with this source",
    "topic": "MQTT messages on topics that do not match the source's format",
}
_INFO_ONLY = {"duplicate"}
#: the same advice for Chinese-speaking installers (the locale decides, firmware_bridge.kernel.locale)
ADVICE_ZH: dict[str, str] = {
    "crc": "CRC 校验错误：检查波特率、线缆及其接地，以及无线模块附近的干扰",
    "escape": "SLIP 转义错误：线路噪声或波特率不对",
    "short": "帧被截断：线路噪声、波特率不对或无线模块在收帧中途重启",
    "oversize": "帧过长：波特率不对，或设备不是 Vigil 帧格式",
    "length": "载荷长度不对：设备固件与本网关版本不匹配",
    "version": "载荷版本未知：设备固件比本网关新",
    "kind": "设备类型码未知：外来设备或更新的固件",
    "range": "报文头数值越界：设备故障",
    "mic": "LoRaWAN MIC 校验失败：devices.csv 中的会话密钥与设备不一致",
    "unknown_dev_addr": "来自 devices.csv 中没有的 DevAddr 的 LoRaWAN 帧",
    "replay": "LoRaWAN 帧计数器重放：存在重复路径，或设备重启（ABP 重置）",
    "duplicate": "重复帧（收到两次）：无害，只存一次",
    "unknown_device": "来自 devices.csv 以外设备的帧已拒收（accept_unknown_devices = false）",
    "queue_full": "帧队列溢出：网关处理不过来这个数据源",
    "topic": "MQTT 消息的主题与数据源格式不符",
}

#: why the cloud refused records (``UplinkAck.refused``) -> what an installer should do
REFUSAL_ADVICE: dict[str, str] = {
    "unknown_device": "from devices the cloud does not know (forged frames, or devices not registered yet)",
    "not_assigned": "from devices the cloud assigns to another gateway "
    "(a neighbour's devices heard over the air)",
    "wrong_kind": "from devices registered in the cloud as another kind",
    "time_out_of_range": "stamped outside the cloud's time window: check this gateway's clock (NTP)",
    "alert_id_mismatch": "alert steps naming another device's alert: a firmware or gateway bug",
    "alert_not_owned": "alert steps for alerts this gateway does not own "
    "(raised by the cloud or another device)",
    "unlisted": "refused without details (more refusals than one acknowledgement lists)",
}
REFUSAL_ADVICE_ZH: dict[str, str] = {
    "unknown_device": "来自云端不认识的设备（伪造的帧，或尚未登记的设备）",
    "not_assigned": "来自云端分配给其他网关的设备（空中收到的邻近网关的设备）",
    "wrong_kind": "来自在云端登记为其他类型的设备",
    "time_out_of_range": "时间戳超出云端的时间窗口：检查本网关的时钟（NTP）",
    "alert_id_mismatch": "告警步骤指向其他设备的告警：固件或网关的缺陷",
    "alert_not_owned": "告警步骤所属的告警不归本网关（由云端或其他设备产生）",
    "unlisted": "被拒收但未列明原因（拒收条数超过一次确认能列出的数量）",
}
#: what to do about one device's refused records (the installer report), zh; English in edge/quarantine.py
_DEVICE_ADVICE_ZH: dict[str, str] = {
    "unknown_device": "未在云端登记：请登记（vigil cloud import-devices），如非我方设备可忽略",
    "not_assigned": "在云端分配给了其他网关：可能是空中收到的邻近网关的设备，或请修正其 gateway_id",
    "wrong_kind": "在云端登记为其他设备类型：请修正云端登记或 devices.csv",
}


@dataclass
class Report:
    running: bool
    lines: list[str] = field(default_factory=list)
    problems: int = 0

    zh_lines: list[str] = field(default_factory=list)

    def _add(self, label: tuple[str, str], text: str, zh: str | None) -> None:
        self.lines.append(f"  {label[1]}  {text}")
        self.zh_lines.append(f"  {label[0]}  {zh or text}")

    def ok(self, text: str, zh: str | None = None) -> None:
        self._add(("正常", "ok  "), text, zh)

    def bad(self, text: str, zh: str | None = None) -> None:
        self._add(("问题", "PROBLEM"), text, zh)
        self.problems += 1

    def info(self, text: str, zh: str | None = None) -> None:
        self._add(("信息", "info"), text, zh)

    def render(self, language: locale.Lang | None = None) -> str:
        """One sentence per finding, in the locale's language (``VIGIL_LANG`` / ``LANG``)."""
        if (language or locale.lang()) == "zh":
            head = "Vigil 网关：运行中" if self.running else "Vigil 网关：未运行（以下读自发件箱文件）"
            tail = "未发现问题。" if not self.problems else f"发现 {self.problems} 个问题。"
            return "\n".join([head, *self.zh_lines, tail])
        head = (
            "Vigil gateway: running" if self.running else "Vigil gateway: NOT RUNNING (read the outbox file)"
        )
        tail = "No problems found." if not self.problems else f"{self.problems} problem(s) found."
        return "\n".join([head, *self.lines, tail])

    @property
    def exit_code(self) -> int:
        return 2 if not self.running else (1 if self.problems else 0)


def _ago(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days"


def _ago_zh(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s} 秒"
    if s < 7200:
        return f"{s // 60} 分钟"
    if s < 172800:
        return f"{s // 3600} 小时 {s % 3600 // 60} 分钟"
    return f"{s // 86400} 天"


def _utc(t: float) -> str:
    """A time as installers read it: in the display zone (Asia/Shanghai unless VIGIL_DISPLAY_TZ)."""
    return f"{locale.show(t)} ({locale.display_zone().key})"


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((dict(s.labels), float(s.value)))
    return out


def diagnose_metrics(text: str, now: float | None = None) -> Report:
    now = time.time() if now is None else now
    m = parse_metrics(text)
    r = Report(running=True)

    def total(name: str) -> float:
        return sum(v for _, v in m.get(name, []))

    started = total("vigil_gateway_start_time_seconds")
    if started:
        r.info(f"up for {_ago(now - started)}", f"已运行 {_ago_zh(now - started)}")
    frames: dict[str, float] = {lab["source"]: v for lab, v in m.get("vigil_gateway_frames_total", [])}
    up = {lab["source"]: v for lab, v in m.get("vigil_gateway_source_up", [])}
    rejects: dict[str, dict[str, float]] = defaultdict(dict)
    for lab, v in m.get("vigil_gateway_rejects_total", []):
        rejects[lab["source"]][lab["reason"]] = v
    for src in sorted(set(frames) | set(up) | set(rejects)):
        good = frames.get(src, 0.0)
        if up.get(src, 1.0) == 0:
            r.bad(
                f"source {src} is not connected (port missing, broker down or address in use)",
                f"数据源 {src} 未连接（串口不存在、MQTT 服务器未运行或地址被占用）",
            )
        bad_total = sum(v for k, v in rejects[src].items() if k not in _INFO_ONLY)
        if good and not bad_total:
            r.ok(f"source {src}: {int(good)} frames accepted", f"数据源 {src}：已接收 {int(good)} 帧")
        if not good and not bad_total and up.get(src, 1.0) != 0:
            r.info(f"source {src}: no frames yet", f"数据源 {src}：尚未收到帧")
        for reason, n in sorted(rejects[src].items(), key=lambda kv: -kv[1]):
            if not n:
                continue
            share = 100.0 * n / max(good + n, 1.0)
            msg = f"source {src}: {int(n)} {ADVICE.get(reason, reason)} ({share:.1f} % of frames)"
            zh = f"数据源 {src}：{int(n)} 帧，{ADVICE_ZH.get(reason, reason)}（占 {share:.1f} %）"
            (r.info if reason in _INFO_ONLY or share < 0.1 else r.bad)(msg, zh)
    unknown = total("vigil_gateway_unknown_devices_total")
    if unknown:
        r.bad(
            f"{int(unknown)} frames came from devices not listed in devices_file: add them to devices.csv",
            f"{int(unknown)} 帧来自 devices_file 中没有的设备：把它们加入 devices.csv",
        )
    qd = total("vigil_gateway_queue_depth")
    if qd > 1000:
        r.bad(f"{int(qd)} frames are waiting to be decoded: the gateway is falling behind (CPU?)")
    depth = {lab["lane"]: v for lab, v in m.get("vigil_gateway_outbox_depth", [])}
    oldest = total("vigil_gateway_outbox_oldest_age_seconds")
    _outbox_lines(r, depth, oldest)
    if total("vigil_gateway_uplink_up") >= 1:
        r.ok("cloud reachable; the last batch was acknowledged", "云端可达；最近一批数据已确认")
    else:
        since = total("vigil_gateway_uplink_down_since_seconds")
        errors = {lab["reason"]: v for lab, v in m.get("vigil_gateway_uplink_errors_total", []) if v}
        why = f" (errors: {', '.join(f'{k} x{int(v)}' for k, v in errors.items())})" if errors else ""
        auth = {
            k: v for k, v in errors.items() if k in ("http_401", "http_403", "unauthenticated", "forbidden")
        }
        if auth:
            r.bad(
                f"the cloud refuses this gateway's credential ({', '.join(auth)}): on the cloud run "
                "`vigil cloud gateway rotate ID` (`vigil cloud gateway add ID` for a new gateway), put the "
                "printed token in gateway.credential_file, then restart the gateway "
                "(systemctl restart vigil-gateway); check gateway.id matches ID",
                f"云端拒绝本网关的凭据（{', '.join(auth)}）：在云端运行 `vigil cloud gateway rotate ID`"
                "（新网关用 `vigil cloud gateway add ID`），把打印出的令牌写入 gateway.credential_file，"
                "然后重启网关（systemctl restart vigil-gateway）；并确认 gateway.id 与 ID 一致",
            )
        if since:
            r.bad(
                f"cloud unreachable since {_utc(since)} ({_ago(now - since)}){why}; "
                "data is kept in the outbox",
                f"云端自 {_utc(since)} 起不可达（{_ago_zh(now - since)}）{why}；数据保存在发件箱中",
            )
        elif errors:
            r.bad(f"cloud not reached yet{why}", f"尚未连上云端{why}")
        else:
            r.info("no batch sent to the cloud yet", "尚未向云端发送数据")
    _alert_lane_lines(r, m, now)
    for lab, v in m.get("vigil_gateway_dropped_total", []):
        if v:
            r.bad(
                f"{int(v)} records dropped ({lab['what'].replace('_', ' ')}): "
                "raise outbox.max_bytes / max_age_s "
                "or restore the uplink",
                f"丢弃了 {int(v)} 条记录（{lab['what']}）：调大 outbox.max_bytes / max_age_s 或恢复上行链路",
            )
    fails = sum(v for lab, v in m.get("vigil_gateway_actions_total", []) if lab.get("result") == "failed")
    if fails:
        r.bad(
            f"{int(fails)} local life-safety action(s) failed: "
            "check the [[actions]] command, buzzer path or modem",
            f"{int(fails)} 次本地生命安全动作失败：检查 [[actions]] 的命令、蜂鸣器路径或调制解调器",
        )
    _refusal_lines(
        r,
        {lab["reason"]: int(v) for lab, v in m.get("vigil_gateway_quarantined_total", []) if v},
        {lab["lane"]: int(v) for lab, v in m.get("vigil_gateway_dead_letter_total", []) if v},
    )
    restarts = {lab["source"]: v for lab, v in m.get("vigil_gateway_source_restarts_total", []) if v}
    for src, n in restarts.items():
        r.bad(
            f"source {src} crashed and was restarted {int(n)} time(s): "
            "see the journal (journalctl -u vigil-gateway)",
            f"数据源 {src} 崩溃并重启了 {int(n)} 次：查看日志（journalctl -u vigil-gateway）",
        )
    return r


def _alert_lane_lines(r: Report, m: dict[str, list[tuple[dict[str, str], float]]], now: float) -> None:
    """The MQTT alert lane (edge/uplink/alert_lane.py); nothing with an HTTP uplink."""
    state = next((lab["state"] for lab, v in m.get("vigil_gateway_alert_lane_state", []) if v), None)
    fallbacks = int(sum(v for _, v in m.get("vigil_gateway_alert_lane_fallbacks_total", [])))
    since = f"; judged missing {fallbacks} time(s) since start" if fallbacks else ""
    since_zh = f"；启动以来 {fallbacks} 次判定告警通道不可用" if fallbacks else ""
    if state == "in_use":
        r.ok(
            f"MQTT alert lane in use: alert batches go on .../alert, never behind telemetry{since}",
            f"MQTT 告警通道使用中：告警批次走 .../alert，不排在遥测之后{since_zh}",
        )
    elif state == "probing":
        r.info(
            f"MQTT alert lane being re-tried: the next alert batch goes on .../alert{since}",
            f"MQTT 告警通道重试中：下一批告警走 .../alert{since_zh}",
        )
    elif state == "fallback":
        until = sum(v for _, v in m.get("vigil_gateway_alert_lane_fallback_until_seconds", []))
        r.bad(
            f"MQTT alert lane not answered while .../up is: alert batches go on .../up (behind any "
            f"telemetry backlog) until {_utc(until)} (in {_ago(until - now)}), then the lane is re-tried"
            f"{since}. Check that the cloud's ingest workers run the alert lane and that the broker ACL "
            "has the line `pattern write vigil/v1/gw/%u/alert` (docs/contract.md, Alert lane)",
            f"MQTT 告警通道无应答而 .../up 有应答：告警批次改走 .../up（排在遥测积压之后），"
            f"直至 {_utc(until)}（{_ago_zh(until - now)}后），届时重试告警通道{since_zh}。"
            "请检查云端接入进程是否启用告警通道，以及 MQTT 服务器 ACL 是否有 "
            "`pattern write vigil/v1/gw/%u/alert` 一行（docs/contract.md，Alert lane）",
        )
    elif state == "disabled":
        r.info(
            "MQTT alert lane off (uplink.mqtt_alert_topic = false): alert batches go on .../up",
            "MQTT 告警通道已关闭（uplink.mqtt_alert_topic = false）：告警批次走 .../up",
        )


def _refusal_lines(
    r: Report,
    quarantined: dict[str, int],
    dead_letter: dict[str, int],
    devices: list[tuple[str, str, int]] | None = None,
) -> None:
    """Records the cloud refused (quarantine) and records given up on (dead letter): never silent."""
    for reason, n in sorted(quarantined.items(), key=lambda kv: -kv[1]):
        r.bad(
            f"{n} record(s) refused by the cloud and quarantined (not re-sent): "
            f"{REFUSAL_ADVICE.get(reason, reason)}",
            f"{n} 条记录被云端拒收并已隔离（不再重发）：{REFUSAL_ADVICE_ZH.get(reason, reason)}",
        )
    for en, zh in device_report_lines(devices or []):
        r.bad(en, zh)
    lanes_zh = {"alert": "告警", "telemetry": "遥测"}
    for lane, n in sorted(dead_letter.items()):
        r.bad(
            f"{n} {lane} record(s) in the dead letter: the cloud kept refusing them "
            "(see the journal for the reason; they are kept in the outbox's dead_letter table)",
            f"死信中有 {n} 条{lanes_zh.get(lane, lane)}记录：云端一再拒收"
            "（原因见日志；记录保存在发件箱的 dead_letter 表中）",
        )


def device_report_lines(rows: list[tuple[str, str, int]]) -> list[tuple[str, str]]:
    """``(en, zh)`` installer sentences for quarantined ``(device_id, reason, records)`` rows."""
    out: list[tuple[str, str]] = []
    for device_id, reason, n in rows:
        en = unknown_device_report([(device_id, reason, n)])
        if en and reason in _DEVICE_ADVICE_ZH:
            out.append((en[0], f"设备 {device_id}：{n} 条记录被拒收，{_DEVICE_ADVICE_ZH[reason]}"))
        if len(out) >= 10:
            break
    return out


def quarantine_devices(path: Path, limit: int = 20) -> list[tuple[str, str, int]]:
    """``(device_id, reason, records)`` from the outbox's quarantine, read-only; ``[]`` if unreadable."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        return [
            (str(d), str(why), int(n))
            for d, why, n in db.execute(
                "SELECT device_id, reason, SUM(n) FROM quarantine WHERE device_id != ''"
                " GROUP BY device_id, reason ORDER BY 3 DESC LIMIT ?",
                (limit,),
            )
        ]
    except sqlite3.Error:  # an outbox written before the quarantine existed
        return []
    finally:
        db.close()


def _outbox_lines(r: Report, depth: dict[str, float], oldest: float) -> None:
    a, live, back = depth.get("alert", 0), depth.get("live", 0), depth.get("backlog", 0)
    text = f"outbox: {int(a)} alert steps, {int(live)} live and {int(back)} backlog readings waiting"
    zh = f"发件箱：待发送告警步骤 {int(a)} 个、实时读数 {int(live)} 条、积压读数 {int(back)} 条"
    if oldest:
        text += f"; oldest record {_ago(oldest)} old"
        zh += f"；最早一条已等待 {_ago_zh(oldest)}"
    (r.bad if a and oldest > 60 else r.ok if not (live or back) else r.info)(text, zh)


def diagnose_outbox(path: Path, now: float | None = None, live_window_s: float = 300.0) -> Report:
    """The daemon is not answering: report what its outbox file says."""
    now = time.time() if now is None else now
    r = Report(running=False)
    r.bad(
        "the daemon does not answer on its metrics port: systemctl status vigil-gateway",
        "守护进程的指标端口没有响应：运行 systemctl status vigil-gateway 查看",
    )
    if not path.exists():
        r.bad(
            f"no outbox at {path}: the gateway has never run with this data_dir",
            f"{path} 处没有发件箱：网关从未以此 data_dir 运行过",
        )
        return r
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        alerts, live, backlog = db.execute(
            "SELECT COALESCE(SUM(CASE WHEN lane=0 THEN n END),0),"
            " COALESCE(SUM(CASE WHEN lane=1 AND created>=? THEN n END),0),"
            " COALESCE(SUM(CASE WHEN lane=1 AND created<? THEN n END),0) FROM records",
            (now - live_window_s, now - live_window_s),
        ).fetchone()
        oldest = db.execute("SELECT MIN(created) FROM records").fetchone()[0]
        kv = {
            k: bytes(v)
            for k, v in db.execute(
                "SELECT key, value FROM kv"
                " WHERE key IN ('dropped','uplink_state','quarantined','dead_letter')"
            )
        }
    finally:
        db.close()
    _outbox_lines(
        r,
        {"alert": alerts, "live": live, "backlog": backlog},
        0.0 if oldest is None else now - float(oldest),
    )
    state = json.loads(kv.get("uplink_state", b"{}"))
    if state.get("up") is False and state.get("down_since"):
        why = str(state.get("last_error", ""))[:120]
        r.bad(
            f"cloud was unreachable since {_utc(state['down_since'])} ({why})",
            f"云端自 {_utc(state['down_since'])} 起不可达（{why}）",
        )
    elif state.get("up"):
        r.info(
            f"cloud was reachable at {_utc(state.get('time', now))}",
            f"云端在 {_utc(state.get('time', now))} 时可达",
        )
    for what, n in json.loads(kv.get("dropped", b"{}")).items():
        if n:
            r.bad(f"{n} records dropped ({what.replace('_', ' ')})", f"丢弃了 {n} 条记录（{what}）")
    _refusal_lines(
        r,
        json.loads(kv.get("quarantined", b"{}")),
        json.loads(kv.get("dead_letter", b"{}")),
        quarantine_devices(path),
    )
    return r


def gateway_status(
    metrics_url: str | None,
    outbox: Path | None,
    timeout_s: float = 3.0,
    live_window_s: float = 300.0,
    warnings: Sequence[tuple[str, str]] = (),
) -> Report:
    """The report from the daemon's metrics, else from its outbox; ``warnings`` are ``(zh, en)`` problems
    found in the configuration (a plaintext uplink, :meth:`edge.config.UplinkSection.plaintext_warning`)."""
    report = _gateway_status(metrics_url, outbox, timeout_s, live_window_s)
    for zh, en in warnings:
        report.bad(en, zh)
    return report


def _gateway_status(
    metrics_url: str | None, outbox: Path | None, timeout_s: float, live_window_s: float
) -> Report:
    import httpx

    if metrics_url:
        try:
            resp = httpx.get(metrics_url, timeout=timeout_s)
            resp.raise_for_status()
        except httpx.HTTPError:
            pass
        else:
            report = diagnose_metrics(resp.text)
            if outbox is not None and outbox.exists():  # the installer report names the devices
                for en, zh in device_report_lines(quarantine_devices(outbox)):
                    report.bad(en, zh)
            return report
    if outbox is None:
        r = Report(running=False)
        r.bad(
            "the daemon does not answer and no outbox path is known (pass --config)",
            "守护进程没有响应，也不知道发件箱路径（请加 --config）",
        )
        return r
    return diagnose_outbox(outbox, live_window_s=live_window_s)
