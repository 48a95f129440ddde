"""Dependencies shared by the routes: settings, the job store, the artifact store, the caller's tenant.

They do no I/O, so they are `async def`: FastAPI would run a plain `def` dependency in the threadpool,
one thread hop per dependency per request, which under load costs more than the route itself."""
from __future__ import annotations

import ipaddress
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import Problem
from api.quotas import Quotas
from api.reads import AsyncReads
from api.settings import Settings
from worker.artifacts import ArtifactStore
from worker.lifecycle import Lifecycle
from worker.store import JobStore


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


async def get_reads(request: Request) -> AsyncReads:
    return request.app.state.reads


async def get_artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts


async def get_quotas(request: Request) -> Quotas:
    quotas = getattr(request.app.state, "quotas", None)
    if quotas is None:  # made on first use, on the store's Redis client
        settings: Settings = request.app.state.settings
        quotas = request.app.state.quotas = Quotas(request.app.state.store.r, settings.max_active_jobs_per_tenant,
                                                   settings.max_tenant_upload_bytes)
    return quotas


# Declares the scheme in the OpenAPI document (components.securitySchemes, and `security` on every operation
# that needs a tenant), so Swagger UI's "Authorize" button sends the key. auto_error=False: a missing or
# non-Bearer header is answered below, as a problem document, not by FastAPI's own 403.
BEARER = HTTPBearer(auto_error=False, scheme_name="apiKey", bearerFormat="API key",
                    description="An API key from KD_API_KEYS / KD_API_KEYS_FILE, sent as `Authorization: Bearer "
                    "<key>`. Without keys configured the API is open to loopback connections and needs none.")


async def get_tenant(request: Request,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
    keys: dict[str, str] = request.app.state.keys
    if not keys:
        # Open mode. `distillery up/api` refuse to bind anything but loopback without keys; this holds
        # under any other server too (uvicorn or gunicorn started by hand, a 0.0.0.0 bind): a request
        # that reached a non-loopback address of this machine is refused.
        local = (request.scope.get("server") or ("", 0))[0]
        if not _local_only(local):
            raise Problem(403, f"this API has no keys (KD_API_KEYS or KD_API_KEYS_FILE), so it serves only "
                          f"connections to a loopback address, not to {local}")
        return "default"
    token = credentials.credentials.strip() if credentials is not None else ""
    if token:
        for key, tenant in keys.items():
            if secrets.compare_digest(key, token):
                return tenant
    raise Problem(401, "missing or unknown API key: send `Authorization: Bearer <key>`",
                  headers={"WWW-Authenticate": "Bearer"})


def _local_only(address: str) -> bool:
    """Whether a connection to this local address can only have come from this machine: a loopback IP,
    or no IP at all (a Unix socket, an in-process test client)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[JobStore, Depends(get_store)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
ReadsDep = Annotated[AsyncReads, Depends(get_reads)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
TenantDep = Annotated[str, Depends(get_tenant)]
QuotasDep = Annotated[Quotas, Depends(get_quotas)]
