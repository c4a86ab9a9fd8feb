"""The app factory: middleware, error handlers, health probes, the /v1 routers (guarded by the
API token when one is set), the dashboard's static files, and the lifespan that opens the
store, starts Ray and the dispatcher thread.

Nothing blocks the event loop: handlers that touch the database or the file system are plain
``def`` (FastAPI runs them in AnyIO's thread pool, sized in ``size_threadpool``) or hand that
work to the same pool with ``run_in_threadpool``; the job work itself happens in Ray, driven by
the dispatcher thread."""
from __future__ import annotations

import gc
import logging
import mimetypes
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import ray
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.api import health
from service.api.deps import auth
from service.api.errors import errors, install_exception_handlers, tidy_openapi
from service.api.files import UPLOAD_THREADS, sweep_incoming
from service.api.limits import BodyLimit
from service.api.routes import V1_ROUTERS
from service.config import Settings
from service.dispatcher import Dispatcher
from service.store import Store, migrate

log = logging.getLogger("bitplan.api")
API_VERSION = "v1"
STATIC = Path(__file__).parents[1] / "static"

POOL_RESERVE = 4  # connections kept for the dispatcher thread and /readyz
GC_THRESHOLDS = (5000, 10, 10)  # young collections every 5000 net allocations (CPython's default: 700)
# what the workers read from their own environment; the server forwards it to its Ray tasks as is
RAY_ENV_PASSTHROUGH = ("BITPLAN_DATA_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _init_ray(settings: Settings) -> None:
    if ray.is_initialized():
        return
    env = {"BITPLAN_UPLOAD_DIR": str(settings.upload_dir), "BITPLAN_EVOLVED_DIR": str(settings.evolved_dir)}
    if settings.model_root is not None:
        env["BITPLAN_MODEL_ROOT"] = str(settings.model_root)
    for k in RAY_ENV_PASSTHROUGH:
        if os.environ.get(k):
            env[k] = os.environ[k]
    kw: dict[str, Any] = {"runtime_env": {"env_vars": env}, "logging_level": logging.WARNING,
                          "log_to_driver": True, "ignore_reinit_error": True}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kw)
    else:
        # "local", not None: with None Ray joins any cluster already running on the machine (a
        # leftover `ray start`, another test's cluster) and then refuses num_cpus
        ray.init(address="local", num_cpus=settings.ray_num_cpus, include_dashboard=False, **kw)
    if settings.prewarm_workers:
        from workers.warm import prewarm
        prewarm(None if settings.prewarm_workers < 0 else settings.prewarm_workers)


def size_threadpool(store: Store, threads: int) -> int:
    """AnyIO's default pool runs every ``def`` handler and every ``run_in_threadpool`` call (see
    DEFAULT_API_THREADS in service/config.py for why it is small). Each thread holds at most one
    pooled connection, so the engine's pool must cover the threads plus the dispatcher, or
    threads would wait on it."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = threads
    pool = store.engine.pool
    capacity = pool.size() + max(getattr(pool, "_max_overflow", 0), 0) if hasattr(pool, "size") else None
    if capacity is not None and capacity < threads + POOL_RESERVE:
        log.warning("the database pool holds %d connections for %d API threads; requests will queue on it",
                    capacity, threads)
    return threads


def freeze_startup_heap(store: Store) -> None:
    """Full garbage collections stopped the whole server (event loop and every thread) for
    ~120 ms each under the job-list load: /healthz p99 110 ms. Load what handlers import
    lazily, then freeze everything alive after start-up (modules, Ray, SQLAlchemy's mappers)
    out of collection, so collections scan only what requests create, and collect the young
    generation every 5000 allocations instead of 700 (the list load then saw one 7 ms full
    collection instead of fourteen of 120 ms)."""
    import search.exports  # noqa: F401  (export_policy)
    import search.policy  # noqa: F401
    import service.jobspec  # noqa: F401  (submit_job)
    import workers.ray_jobs  # noqa: F401  (register_model; torch-free at import)
    from sqlalchemy.orm import configure_mappers
    configure_mappers()
    store.ping()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    sweep_incoming(settings.upload_dir)
    from service.uploads import sweep_staging
    sweep_staging(settings.upload_dir)
    os.environ.setdefault("BITPLAN_UPLOAD_DIR", str(settings.upload_dir))
    os.environ["BITPLAN_EVOLVED_DIR"] = str(settings.evolved_dir)
    migrate(settings.database_url)
    store = Store(settings.database_url)
    size_threadpool(store, settings.api_threads)
    app.state.upload_limiter = anyio.CapacityLimiter(UPLOAD_THREADS)  # copies apart from the DB threads
    _init_ray(settings)
    dispatcher = Dispatcher(store, settings)
    app.state.store, app.state.dispatcher = store, dispatcher
    freeze_startup_heap(store)
    dispatcher.start()
    log.info("bitplan ready: database %s, ray %s", store.engine.url.render_as_string(hide_password=True),
             settings.ray_address or "local")
    try:
        yield
    finally:
        dispatcher.stop()
        store.engine.dispose()


def dashboard():
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="bitplan", version="0.1.0", lifespan=lifespan,
                  description="Mixed-precision quantization policies as a service. Errors are JSON "
                              "`{code, message, detail}`.")
    app.state.settings = settings
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(BodyLimit, settings=settings)
    install_exception_handlers(app)

    def openapi() -> dict:
        if not app.openapi_schema:
            tidy_openapi(FastAPI.openapi(app))
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]

    app.include_router(health.router)
    # every /v1 route; with a token configured they all require it (and say so in OpenAPI)
    token = settings.api_token
    for router in V1_ROUTERS:
        app.include_router(router, prefix=f"/{API_VERSION}", dependencies=[Depends(auth)] if token else [],
                           responses=errors(401) if token else {})

    # the dashboard: static files that talk only to /v1 (no token needed to load the page itself);
    # its ES modules load only when served as JavaScript, whatever the host's mime.types says
    mimetypes.add_type("text/javascript", ".js")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.get("/", include_in_schema=False)(dashboard)
    return app
