"""The phone pages behind the links in messages: no login, no app; the signed link is the key.

- ``/l/{token}`` (the cloud redirects ``/l/{token}`` here): a responder link shows what and where and one
  big button for the link's action (accept, decline, on my way, arrived, resolved: a resolution needs a
  note and may carry a photo from the camera); a resident's case link shows the case's status, a rating
  form (once) and a reopen form (within the window).
- ``/report``: a resident reports a problem (type, description, location, photo) and gets a case number.

These pages show only what the link's API answers (``/api/v1/links/...``): ids, status, place; never
anyone's name, phone or health data. Photos are shrunk in the browser (canvas, 1600 px JPEG) and sent as
a base64 form field, then checked again by the cloud (type, size).

What the pages say when something is refused (docs/phone-pages.md): an expired, incomplete or used link,
an order someone else took, a step the order's stage does not allow, a rating before the case closed or a
second one: in words a grid worker or a resident's family reads, never the cloud's English detail. A
successful action answers a redirect to the link's page (``?done=``), so a reload does not post again.
The phone pages' own words are the catalogs' ``phone.*`` keys.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dashboards.client import ApiError
from dashboards.i18n import Translator
from dashboards.web import MAX_PHOTO_FORM_BYTES, FormError, Web, read_form, same_origin

RESPONDER_PURPOSES = ("accept", "decline", "on_the_way", "arrived", "resolved")
REPORT_CATEGORIES = ("manhole", "smoke", "elderly", "road", "other")
#: every category a case can carry (cloud.notify.residents.CATEGORIES): its title on the case page
CASE_CATEGORIES = ("manhole", "smoke", "fire", "elderly", "road", "water", "gas", "other")
PHOTO_PREFIXES = ("data:image/jpeg;base64,", "data:image/png;base64,", "data:image/webp;base64,")
MAX_PHOTO_B64 = 7 * 1024 * 1024  # about 5 MB of image
#: what ``?done=`` may say after a redirect (anything else says nothing)
DONE = (*RESPONDER_PURPOSES, "rated", "reopened", "member_declined")
#: stages after which a resident's case can be rated and reopened (cloud.notify.residents.rate)
CLOSED_STAGES = ("closed", "rated")


def link_refusal(t: Translator, exc: ApiError) -> str | None:
    """What a person reads when the link itself is refused (expired, forged, used ...); None otherwise."""
    if exc.code == "link_expired":
        return t("phone.err.expired")
    if exc.code in ("link_forged", "link_malformed") or exc.status == 404:
        return t("phone.err.invalid")
    if exc.code == "link_used":
        return t("phone.err.used")
    if exc.status == 429:
        return t("phone.err.busy")
    if exc.status >= 500:
        return t("phone.err.unavailable")
    return None


def shared_link(token: str) -> bool:
    """A link sent to a group (a chat robot: every member holds the same single-use link). Its claims are
    ids only and readable by design (cloud.notify.links); the cloud still checks the signature."""
    head = token.split(".", 1)[0]
    try:
        claims = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(claims, dict) and str(claims.get("a", "")).startswith("group:")


def _photo_refused(exc: ApiError) -> bool:
    return exc.status == 413 or exc.detail.lower().startswith("photo")


def _photo(form: dict[str, str]) -> str | None:
    raw = form.get("photo_b64", "").strip()
    if not raw:
        return None
    if not raw.startswith(PHOTO_PREFIXES):
        raise FormError("error.photo_type")
    if len(raw) > MAX_PHOTO_B64:
        raise FormError("error.photo_size", mb=5)
    return raw


def routes(web: Web) -> list[BaseRoute]:
    def phone(request: Request, template: str, status: int = 200, **ctx: Any) -> Response:
        resp = web.render(request, template, status=status, **ctx)
        resp.headers["Referrer-Policy"] = "same-origin"  # the token is in the URL: never to another site
        return resp

    def case_title(t: Translator, link: dict[str, Any]) -> str:
        """A case's title: a report's category in words (never the machine word ``manhole``)."""
        title = str(link.get("title") or "")
        if title in CASE_CATEGORIES:
            return t("phone.category." + title)
        return title or t("link.case")

    async def show(
        request: Request,
        token: str,
        *,
        message: str = "",
        error: str = "",
        status: int = 200,
        form: dict[str, str] | None = None,
        done: str = "",
    ) -> Response:
        """The link's page; ``form``: what was sent and refused, written back (a note typed in the cold
        is not lost to a refused photo)."""
        sent = {
            k: v for k, v in (form or {}).items() if k in ("note", "outcome", "score", "comment", "reason")
        }
        api = web.public_api()
        t = web.translator(request)
        try:
            link = await api.link(token)
        except ApiError as exc:
            text = link_refusal(t, exc) or t("phone.err.invalid")
            return phone(request, "link_error.html", status=exc.status, message=text)
        if done in DONE and link.get("usable") is not True and (done != "rated" or link.get("rating")):
            message = t("link.done." + done)  # ?done= of what this link did (not of a hand-made URL)
        # a group member's decline: recorded for them, the shared link stays usable for the others
        member_done = done == "member_declined" and link.get("purpose") == "decline" and shared_link(token)
        if member_done:
            message = t("link.done.member_declined")
        if link.get("purpose") == "case":
            return phone(
                request,
                "resident.html",
                status=status,
                link=link,
                token=token,
                message=message,
                error=error,
                title=case_title(web.translator(request), link),
                sent=sent,
                closed=link.get("progress") == "closed" or link.get("status") in CLOSED_STAGES,
            )
        return phone(
            request,
            "responder.html",
            status=status,
            link=link,
            token=token,
            message=message,
            error=error,
            shared=shared_link(token),
            member_done=member_done,
            sent=sent,
        )

    async def link_page(request: Request) -> Response:
        token = request.path_params["token"]
        return await show(request, token, done=request.query_params.get("done", ""))

    def refused(t: Translator, exc: ApiError, what: str, link: dict[str, Any]) -> str:
        """Why an action of this page did not happen, in words (the cloud's detail is for the logs)."""
        said = link_refusal(t, exc)
        if said is not None:
            return said
        if _photo_refused(exc):
            return t("phone.err.photo")
        if what == "act":
            purpose = str(link.get("purpose", ""))
            if exc.status == 409:
                return t("phone.err.taken") if purpose == "accept" else t("phone.err.not_yours")
            if exc.status == 400:
                stage = str((link.get("incident") or {}).get("status") or "")
                action = t("link.purpose." + purpose) if purpose in RESPONDER_PURPOSES else purpose
                return t("phone.err.not_now", stage=t.stage(stage) if stage else "—", action=action)
        if what == "rate" and exc.status == 409:
            return t("phone.err.rated") if link.get("rating") else t("phone.err.rate_open")
        if what == "reopen":
            if exc.status == 409:
                return t("phone.err.reopen_window")
            if exc.status == 403:
                return t("phone.err.reopen_family")
        return t("phone.err.failed")

    async def link_post(request: Request) -> Response:
        token = request.path_params["token"]
        what = request.path_params["what"]
        t = web.translator(request)
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        if what not in ("act", "rate", "reopen"):
            return Response(status_code=404)
        api = web.public_api()
        link: dict[str, Any] = {}
        form: dict[str, str] = {}
        try:
            form = await read_form(request, limit=MAX_PHOTO_FORM_BYTES)
            link = await api.link(token)
            if what == "act":
                note = form.get("note", "").strip()
                if link.get("purpose") == "resolved" and not note:
                    raise FormError("error.note_required")
                outcome = form.get("outcome", "").strip() if link.get("purpose") == "resolved" else ""
                result = await api.use_link(token, note, _photo(form), outcome or None)
                # a group's shared decline link: one member's "I cannot", the order stays open to the group
                done = "member_declined" if result.get("member_only") else str(link.get("purpose", "act"))
            elif what == "rate":
                score = int(form.get("score", "0") or 0)
                if not 1 <= score <= 5:
                    raise FormError("error.score_required")
                await api.rate_case(token, score, form.get("comment", "").strip())
                done = "rated"
            else:
                reason = form.get("reason", "").strip()
                if not reason:
                    raise FormError("error.reason_required")
                await api.reopen_case(token, reason)
                done = "reopened"
        except FormError as exc:
            return await show(request, token, error=t(exc.key, **exc.kw), status=400, form=form)
        except ValueError:
            return await show(request, token, error=t("error.score_required"), status=400, form=form)
        except ApiError as exc:
            if exc.status >= 500 and exc.status != 503:
                raise
            if what == "rate" and exc.status == 409:
                with contextlib.suppress(ApiError):  # rated meanwhile (another phone): say so
                    link = await api.link(token)
            error = refused(t, exc, what, link)
            return await show(request, token, error=error, status=exc.status, form=form)
        # a redirect to the page: a reload shows the result instead of posting the form again
        resp = RedirectResponse(f"{web.base}/l/{token}?done={done}", status_code=303)
        resp.headers["Referrer-Policy"] = "same-origin"
        return resp

    def report_form(request: Request, *, status: int = 200, error: str = "", form: Any = None) -> Response:
        return phone(
            request,
            "report_public.html",
            status=status,
            error=error,
            form=form or {},
            categories=REPORT_CATEGORIES,
            made=None,
            follow="",
        )

    async def report_page(request: Request) -> Response:
        return report_form(request)

    async def report_post(request: Request) -> Response:
        t = web.translator(request)
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        form: dict[str, str] = {}
        try:
            form = await read_form(request, limit=MAX_PHOTO_FORM_BYTES)
            category = form.get("category", "")
            if category not in REPORT_CATEGORIES:
                raise FormError("error.type_required")
            description = form.get("description", "").strip()
            if not description:
                raise FormError("error.description_required")
            try:
                lat, lon = float(form.get("lat", "")), float(form.get("lon", ""))
            except ValueError as exc:
                raise FormError("error.location_required") from exc
            body = {
                "category": category,
                "description": description,
                "lat": lat,
                "lon": lon,
                "photo_b64": _photo(form),
            }
            made = await web.public_api().post("/api/v1/reports", body)
        except FormError as exc:
            return report_form(request, status=400, error=t(exc.key, **exc.kw), form=form)
        except ApiError as exc:
            if exc.status >= 500 and exc.status != 503:
                raise
            if exc.status == 429:
                text = t("phone.err.too_many_reports")
            elif _photo_refused(exc):
                text = t("phone.err.photo")
            elif exc.status == 400:  # category and description were checked above: the area
                text = t("phone.err.outside")
            elif exc.status == 422:
                text = t("error.location_required")
            else:
                text = t("phone.err.unavailable") if exc.status == 503 else t("phone.err.failed")
            return report_form(request, status=exc.status, error=text, form=form)
        follow = str(made.get("follow_url") or "")
        token = follow.rsplit("/l/", 1)[1] if "/l/" in follow else ""
        return phone(
            request,
            "report_public.html",
            error="",
            form={},
            categories=REPORT_CATEGORIES,
            made=made,
            follow=f"{web.base}/l/{token}" if token else "",
        )

    return [
        Route("/l/{token}", link_page),
        Route("/l/{token}/{what}", link_post, methods=["POST"]),
        Route("/report", report_page),
        Route("/report", report_post, methods=["POST"]),
    ]
