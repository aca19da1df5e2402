"""The viewer's web app: Starlette routes over `Reader`, pages rendered with Jinja2.

Starlette and uvicorn are what Dagster's own webserver runs on, so they come with the pipeline's
dependencies and are kept up by a large community; docs/viewer.md says why this stack.
"""

from __future__ import annotations

import json
import logging
import socket

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..store import Home
from .plots import distributions_png
from .queries import END_REASONS, PAGE_SIZE, SORTS, Filters, Reader, ViewerError

log = logging.getLogger(__name__)

TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("gen_ssd_dagster.viewer", "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)
TEMPLATES.filters["pretty_json"] = lambda text: json.dumps(json.loads(text), indent=1, sort_keys=True) if text else ""


def render(name: str, status_code: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**context), status_code=status_code)


def create_app(home: Home) -> Starlette:
    """The app for one home. Raises ViewerError at once if the home has no DuckDB file."""
    reader = Reader(home)
    page_context = {"root": "/", "home": str(home.root), "link": lambda key: f"/t/{key}"}

    async def trajectory_list(request: Request) -> Response:
        filters = Filters.from_query(request.query_params)
        with reader.session():
            items, total = reader.page(filters)
            facets = reader.facets()
        if not items and total and filters.page:
            raise ViewerError(f"page {filters.page} is past the last page of {total} trajectories", 404)
        return render("list.html", **page_context, filters=filters, facets=facets, items=items, total=total,
                      first=filters.page * PAGE_SIZE, end_reasons=END_REASONS, sorts=SORTS)

    async def trajectory(request: Request) -> Response:
        with reader.session():
            t = reader.trajectory(request.path_params["key"])
            steps, others = reader.steps(t["trajectory_key"]), reader.same_problem(t)
        return render("trajectory.html", **page_context, t=t, steps=steps, others=others)

    async def distributions(request: Request) -> Response:
        png = distributions_png(reader.distributions(Filters.from_query(request.query_params)))
        return Response(png, media_type="image/png")

    async def viewer_error(request: Request, exc: ViewerError) -> Response:
        return render("error.html", exc.status, **page_context, status=exc.status, message=str(exc))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("viewer: %s failed", request.url.path)  # the trace goes to the terminal, not the page
        return render("error.html", 500, **page_context, status=500,
                      message=f"{type(exc).__name__}: {exc} (the server's terminal has the details)")

    return Starlette(routes=[Route("/", trajectory_list), Route("/t/{key}", trajectory),
                             Route("/distributions.png", distributions)],
                     exception_handlers={ViewerError: viewer_error, Exception: server_error})


def free_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket on `port` (0: a free one), handed to uvicorn so no other process takes it first."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ViewerError(f"cannot listen on {host}:{port}: {exc.strerror} (choose another --port, or 0 for a free one)")
    sock.listen(64)
    return sock


def serve(home: Home, host: str = "127.0.0.1", port: int = 0, announce=print) -> None:
    """Serve the viewer until interrupted; `announce` gets the URL once the socket listens."""
    import uvicorn

    app = create_app(home)
    sock = free_socket(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}/"
    announce(f"gen-ssd view: {home.db_path} (read-only) at {url}  (Ctrl-C stops)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
