"""`vigil frame decode`: what is in this frame? One command for every wire format a gateway meets.

An installer with a hex dump from a serial console, a base64 ``data`` field from ChirpStack or a URC
line from an NB-IoT module should not need a Python prompt to see what the device said. The command
runs the same sans-I/O decoders the gateway runs, so "the CLI decodes it" means "the gateway decodes it".

Output is pretty JSON (UTF-8) on stdout. Bad input prints one line ``error: <reason>`` on stderr and exits
1; a usage error (a missing or malformed option) exits 2. Never a traceback: the handler is the
process boundary, so an unexpected exception is logged at DEBUG and reported as one line too.

This module is the command line only (arguments, input spelling, exit codes); the decoding and the shape
of the description live in :mod:`firmware_bridge.describe`, which imports each transport's decoder only
when that format is asked for.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import math
import os
import re
import sys
from typing import Any

from firmware_bridge.describe import FORMATS, TEXT_FORMATS, DescribeOptions, OptionError, describe, jsonable

log = logging.getLogger(__name__)

_EXAMPLES = """\
examples:
  vigil frame decode 01 01 04 d2 00 05 57 01 02 09 29 00 96 03 52 05 dc 00 19 00 08 08 2a 00 ba
  vigil frame decode --format lorawan --nwk-skey 44024241ed4ce9a68c6a8bc055233fd3 \\
        --app-skey ec925802ae430ca77fd3dd73cb2cc588 40F17DBE4900020001954378762B11FF0D
  export VIGIL_NWK_SKEY=... VIGIL_APP_SKEY=...     # keys out of argv and shell history
  echo '+NNMI:26,00031530BE923B810102002B00405B0201000C00D7FFFF786EB2' | vigil frame decode --format nbiot -
  vigil frame decode --lines - < rejects.log       # one frame per line
"""


class UsageError(Exception):
    """A problem with the command line itself (exit code 2), not with the frame."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``vigil frame decode`` to the `vigil` parser."""
    frame = sub.add_parser(
        "frame", help="inspect frames and payloads", description="Inspect frames and payloads."
    )
    actions = frame.add_subparsers(dest="frame_command", metavar="ACTION", required=True)
    dec = actions.add_parser(
        "decode",
        help="decode one frame or payload and print it as JSON",
        description="Decode one frame or payload (hex or base64, auto-detected; JSON text or an AT line for "
        "the text formats) and print what it says as JSON.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dec.add_argument(
        "frame",
        metavar="FRAME",
        nargs="+",
        help="hex or base64 bytes (words are joined: 01 01 04 d2 ...), JSON / URC text, or - for stdin",
    )
    dec.add_argument(
        "-f",
        "--format",
        choices=FORMATS,
        default="vigil",
        help="wire format (default: vigil, the kind chosen by the payload's kind byte)",
    )
    dec.add_argument(
        "--encoding",
        choices=("auto", "hex", "base64", "raw"),
        default="auto",
        help="how FRAME spells bytes; auto tries hex first; raw: binary bytes on stdin (FRAME -)",
    )
    dec.add_argument(
        "--payload",
        choices=("auto", "vigil", "cayenne", "raw"),
        default="auto",
        help="how to read the device payload inside a transport frame (default: auto)",
    )
    dec.add_argument(
        "--device-id",
        help="device id for a bare payload or a LoRaWAN frame (its DevEUI; default: the DevAddr); "
        "the other transports carry their own",
    )
    dec.add_argument(
        "--lines",
        action="store_true",
        help="one frame per line (a log, FRAME -): print one JSON object per line, keep going on errors",
    )
    dec.add_argument(
        "--time", type=_utc_seconds, help="UTC epoch seconds to stamp on the reading (default: now)"
    )
    lora = dec.add_argument_group("LoRaWAN (lorawan, semtech)")
    lora.add_argument(
        "--nwk-skey",
        metavar="HEX",
        default=os.environ.get("VIGIL_NWK_SKEY"),
        help="network session key, verifies the MIC (default: $VIGIL_NWK_SKEY, not in shell history)",
    )
    lora.add_argument(
        "--app-skey",
        metavar="HEX",
        default=os.environ.get("VIGIL_APP_SKEY"),
        help="application session key, decrypts FRMPayload (default: $VIGIL_APP_SKEY)",
    )
    lora.add_argument("--dev-addr", metavar="HEX", help="DevAddr the keys belong to (default: the frame's)")
    lora.add_argument("--fcnt-last", metavar="N", type=int, help="last accepted 32-bit FCnt (replay check)")
    dec.add_argument(
        "--framing", choices=("slip", "cobs"), default="slip", help="link framing (default: slip)"
    )
    dec.set_defaults(handler=decode_command)


def decode_command(args: argparse.Namespace) -> int:
    from firmware_bridge.errors import DecodeError

    frame = " ".join(args.frame)
    try:
        opts = _options(args)
        raw: bytes | None = None
        if args.encoding == "raw":
            if frame != "-" or args.lines:
                raise UsageError(
                    "--encoding raw reads one binary frame from stdin: give FRAME as -, no --lines"
                )
            raw = sys.stdin.buffer.read()
            text = raw.decode("utf-8", "replace")
        else:
            text = sys.stdin.read() if frame == "-" else frame
        if args.lines:
            return _decode_lines(text, args, opts)
        out = json.dumps(
            jsonable(_decode_one(text, raw, args, opts)), indent=2, ensure_ascii=False, allow_nan=False
        )
    except (UsageError, OptionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DecodeError as exc:
        print(f"error: {exc} [{exc.reason}]", file=sys.stderr)
        return 1
    except Exception as exc:  # the process boundary: one line, never a traceback
        log.debug("frame decode failed", exc_info=True)
        print(f"error: cannot decode ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    sys.stdout.write(out + "\n")
    return 0


def _decode_one(
    text: str, raw: bytes | None, args: argparse.Namespace, opts: DescribeOptions
) -> dict[str, Any]:
    from firmware_bridge.errors import DecodeError

    if args.format in TEXT_FORMATS:
        return describe(args.format, text, opts)
    data, used = (raw, "raw") if raw is not None else parse_bytes(text, args.encoding)
    try:
        return describe(args.format, data, opts)
    except DecodeError as exc:
        if used == "base64" and args.encoding == "auto":  # say how a non-hex FRAME was read
            exc.args = (f"{exc} (FRAME is not hex, read as base64)",)
        raise


def _decode_lines(text: str, args: argparse.Namespace, opts: DescribeOptions) -> int:
    """One frame per line (blank lines and ``#`` comments skipped) -> one JSON object per line.

    A line that does not decode becomes ``{"line": n, "error": ..., "reason": ...}`` and the others go on;
    the exit code is 1 if any line failed, and a one-line summary goes to stderr.
    """
    from firmware_bridge.errors import DecodeError

    done = failed = 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item: dict[str, Any] = {"line": n, **_decode_one(line, None, args, opts)}
        except DecodeError as exc:
            item = {"line": n, "error": str(exc), "reason": exc.reason}
            failed += 1
        done += 1
        sys.stdout.write(json.dumps(jsonable(item), ensure_ascii=False, allow_nan=False) + "\n")
    print(f"decoded {done - failed} of {done} frames", file=sys.stderr)
    return 1 if failed else 0


# -- input ----------------------------------------------------------------------------------------------
_HEX_SEPARATORS = re.compile(r"[\s:\-]")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")


def parse_bytes(text: str, encoding: str = "auto") -> tuple[bytes, str]:
    """Bytes spelled as hex (``0x`` prefix, spaces or colons allowed) or base64 (padding optional).

    ``auto`` tries hex first: a string that is both (``"ABCD"``) is read as hex; force with ``base64``.
    Returns the bytes and the encoding that was used.
    """
    from firmware_bridge.errors import DecodeError

    s = text.strip()
    if not s:
        raise DecodeError("FRAME is empty", reason="input")
    if encoding in ("auto", "hex"):
        h = _HEX_SEPARATORS.sub("", s[2:] if s[:2].lower() == "0x" else s)
        if _HEX.fullmatch(h):
            return bytes.fromhex(h), "hex"
        if encoding == "hex":
            raise DecodeError(f"FRAME is not hex: {s[:40]!r}", reason="input")
    b64 = re.sub(r"\s", "", s)
    b64 += "=" * (-len(b64) % 4)
    try:
        return base64.b64decode(
            b64, altchars=b"-_" if re.search(r"[-_]", b64) else None, validate=True
        ), "base64"
    except (binascii.Error, ValueError):
        what = "base64" if encoding == "base64" else "hex or base64"
        raise DecodeError(f"FRAME is not {what}: {s[:40]!r}", reason="input") from None


def _utc_seconds(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(t) and t >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a UTC epoch time (finite, >= 0)")
    return t


def _options(args: argparse.Namespace) -> DescribeOptions:
    return DescribeOptions(
        payload=args.payload,
        device_id=args.device_id,
        time=args.time,
        nwk_skey=args.nwk_skey,
        app_skey=args.app_skey,
        dev_addr=args.dev_addr,
        fcnt_last=args.fcnt_last,
        framing=args.framing,
    )
