"""The API's settings: the service's shared settings (worker.config) plus what only the API reads.

From environment variables prefixed KD_ (pydantic-settings); tests override them by constructing one.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from worker.config import WorkerSettings


class Settings(WorkerSettings):
    api_keys: str | None = Field(None, description="comma-separated key:tenant pairs")
    api_keys_file: Path | None = Field(None, description="file with one `key tenant` pair a line")
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    max_body_bytes: int = Field(1024**2, ge=1, description="largest JSON body accepted")
    max_active_jobs_per_tenant: int | None = Field(None, ge=1, description="queued + running jobs a tenant may "
                                                   "have at once; more answer 429 (unset: no limit)")
    max_tenant_upload_bytes: int | None = Field(None, ge=1, description="bytes of uploads a tenant may store in "
                                                "all; more answer 413 (unset: no limit)")
    metrics_key: str | None = Field(None, description="when set, GET /metrics needs `Authorization: Bearer <it>`; "
                                    "unset, /metrics is open like /healthz")
    api_threads: int = Field(8, ge=1, description="threads serving the API's blocking routes (submit, cancel, list)")

    def tenants_by_key(self) -> dict[str, str]:
        """Configured API keys; empty means the service runs open (loopback only)."""
        keys: dict[str, str] = {}
        for pair in (self.api_keys or "").split(","):
            if pair.strip():
                key, _, tenant = pair.strip().partition(":")
                keys[key] = tenant or "default"
        if self.api_keys_file:
            for line in self.api_keys_file.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and not line.lstrip().startswith("#"):
                    keys[parts[0]] = parts[1]
        return keys


@lru_cache
def get_settings() -> Settings:
    return Settings()
