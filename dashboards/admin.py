"""Routing rules, escalation policies, rosters and time limits: viewable by every user, editable by an
administrator (``/api/v1/loop/config/{name}``; the cloud validates a document against the others and
audits the change). The editor is the document itself, as JSON: what the API stores is what you see."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from dashboards.client import ApiError
from dashboards.web import FormError, Session, Web, read_form, same_origin

DOCUMENTS = ("routing", "escalation", "roster", "sla")
MAX_DOC_BYTES = 512 * 1024


def routes(web: Web) -> list[BaseRoute]:
    async def show(
        request: Request,
        s: Session,
        name: str,
        *,
        text: str | None = None,
        error: str = "",
        message: str = "",
        status: int = 200,
    ) -> Response:
        doc = await s.api.get(f"/api/v1/loop/config/{name}")
        if text is None:
            text = json.dumps(doc.get("body"), ensure_ascii=False, indent=2)
        return web.render(
            request,
            "config.html",
            status=status,
            session=s,
            name=name,
            names=DOCUMENTS,
            version=doc.get("version"),
            text=text,
            error=error,
            message=message,
        )

    async def config_page(request: Request, s: Session) -> Response:
        name = request.path_params["name"]
        if name not in DOCUMENTS:
            return Response(status_code=404)
        saved = request.query_params.get("saved")
        t = web.translator(request)
        return await show(request, s, name, message=t("config.saved", version=saved) if saved else "")

    async def config_save(request: Request, s: Session) -> Response:
        name = request.path_params["name"]
        t = web.translator(request)
        if name not in DOCUMENTS:
            return Response(status_code=404)
        if not same_origin(request):
            return Response("cross-origin form refused", status_code=403)
        text = ""
        try:
            form = await read_form(request, limit=MAX_DOC_BYTES)
            text = form.get("document", "")
            try:
                body = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FormError("error.json", line=exc.lineno, col=exc.colno, msg=exc.msg) from exc
            if not isinstance(body, dict):
                raise FormError("error.json_object")
            saved = await s.api.request("PUT", f"/api/v1/loop/config/{name}", json=body)
        except FormError as exc:
            return await show(request, s, name, text=text, error=t(exc.key, **exc.kw), status=400)
        except ApiError as exc:
            if exc.status >= 500:
                raise
            return await show(
                request, s, name, text=text, error=web.api_message(request, exc), status=exc.status
            )
        return RedirectResponse(f"{web.base}/config/{name}?saved={saved.get('version', '')}", status_code=303)

    return [
        Route("/config/{name}", web.page(config_page)),
        Route("/config/{name}", web.page(config_save), methods=["POST"]),
    ]
