"""The phone pages behind the links in messages: no login, no app; the signed link is the key.

- ``/l/{token}`` (the cloud redirects ``/l/{token}`` here): a responder link shows what and where and one
  big button for the link's action (accept, decline, on my way, arrived, resolved: a resolution needs a
  note and may carry a photo from the camera); a resident's case link shows the case's status, a rating
  form (once) and a reopen form (within the window).
- ``/report``: a resident reports a problem (type, description, location, photo) and gets a case number.

These pages show only what the link's API answers (``/api/v1/links/...``): ids, status, place; never
anyone's name, phone or health data. Photos are shrunk in the browser (canvas, 1600 px JPEG) and sent as
a base64 form field, then checked again by the cloud (type, size).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dashboards.client import ApiError
from dashboards.web import MAX_PHOTO_FORM_BYTES, FormError, Web, read_form, same_origin

RESPONDER_PURPOSES = ("accept", "decline", "on_the_way", "arrived", "resolved")
REPORT_CATEGORIES = ("manhole", "smoke", "elderly", "road", "other")
PHOTO_PREFIXES = ("data:image/jpeg;base64,", "data:image/png;base64,", "data:image/webp;base64,")
MAX_PHOTO_B64 = 7 * 1024 * 1024  # about 5 MB of image


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

    async def show(
        request: Request, token: str, *, message: str = "", error: str = "", status: int = 200
    ) -> Response:
        api = web.public_api()
        try:
            link = await api.link(token)
        except ApiError as exc:
            return phone(request, "link_error.html", status=exc.status, message=web.api_message(request, exc))
        template = "resident.html" if link.get("purpose") == "case" else "responder.html"
        return phone(request, template, status=status, link=link, token=token, message=message, error=error)

    async def link_page(request: Request) -> Response:
        token = request.path_params["token"]
        done = request.query_params.get("done", "")
        t = web.translator(request)
        return await show(request, token, message=t("link.done." + done) if done.isidentifier() else "")

    async def link_post(request: Request) -> Response:
        token = request.path_params["token"]
        what = request.path_params["what"]
        t = web.translator(request)
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        api = web.public_api()
        try:
            form = await read_form(request, limit=MAX_PHOTO_FORM_BYTES)
            if what == "act":
                note = form.get("note", "").strip()
                link = await api.link(token)
                if link.get("purpose") == "resolved" and not note:
                    raise FormError("error.note_required")
                outcome = form.get("outcome", "").strip() if link.get("purpose") == "resolved" else ""
                await api.use_link(token, note, _photo(form), outcome or None)
                done = str(link.get("purpose", "act"))
            elif what == "rate":
                score = int(form.get("score", "0") or 0)
                if not 1 <= score <= 5:
                    raise FormError("error.score_required")
                await api.rate_case(token, score, form.get("comment", "").strip())
                done = "rated"
            elif what == "reopen":
                reason = form.get("reason", "").strip()
                if not reason:
                    raise FormError("error.reason_required")
                await api.reopen_case(token, reason)
                done = "reopened"
            else:
                return Response(status_code=404)
        except FormError as exc:
            return await show(request, token, error=t(exc.key, **exc.kw), status=400)
        except ValueError:
            return await show(request, token, error=t("error.score_required"), status=400)
        except ApiError as exc:
            if exc.status >= 500:
                raise
            return await show(request, token, error=web.api_message(request, exc), status=exc.status)
        return await show(request, token, message=t("link.done." + done))

    async def report_page(request: Request) -> Response:
        return phone(
            request, "report_public.html", error="", form={}, categories=REPORT_CATEGORIES, made=None
        )

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
            return phone(
                request,
                "report_public.html",
                status=400,
                error=t(exc.key, **exc.kw),
                form=form,
                categories=REPORT_CATEGORIES,
                made=None,
            )
        except ApiError as exc:
            if exc.status >= 500:
                raise
            return phone(
                request,
                "report_public.html",
                status=exc.status,
                error=web.api_message(request, exc),
                form=form,
                categories=REPORT_CATEGORIES,
                made=None,
            )
        return phone(
            request, "report_public.html", error="", form={}, categories=REPORT_CATEGORIES, made=made
        )

    return [
        Route("/l/{token}", link_page),
        Route("/l/{token}/{what}", link_post, methods=["POST"]),
        Route("/report", report_page),
        Route("/report", report_post, methods=["POST"]),
    ]
