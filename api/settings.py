"""Service settings, from environment variables prefixed KD_ (pydantic-settings); tests override them."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KD_", extra="ignore")

    redis_url: str | None = Field(None, description="redis://host:port/db; `distillery up` starts its own if unset")
    data_dir: Path = Path("data")
    dataset_root: Path | None = Field(None, description="default <data_dir>/datasets")
    artifact_dir: Path | None = Field(None, description="uploads and job outputs; default <data_dir>/artifacts. "
                                      "Must be shared by the API and every worker")
    allow_download: bool = Field(False, description="let workers download public datasets missing from the root")
    cache_dir: Path | None = Field(None, description="teacher outputs kept for later jobs on the same teacher and "
                                   "data (kdcore.teacher_cache); default <data_dir>/cache; safe to delete any time")
    teacher_cache_max_bytes: int = Field(2 * 1024**3, ge=0, description="largest teacher-feature cache per job "
                                         "(bytes); above it the teacher runs at every step")
    api_keys: str | None = Field(None, description="comma-separated key:tenant pairs")
    api_keys_file: Path | None = Field(None, description="file with one `key tenant` pair a line")
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    max_body_bytes: int = Field(1024**2, ge=1, description="largest JSON body accepted")
    max_active_jobs_per_tenant: int | None = Field(None, ge=1, description="queued + running jobs a tenant may "
                                                   "have at once; more answer 429 (unset: no limit)")
    max_tenant_upload_bytes: int | None = Field(None, ge=1, description="bytes of uploads a tenant may store in "
                                                "all; more answer 413 (unset: no limit)")
    api_threads: int = Field(8, ge=1, description="threads serving the API's blocking routes (submit, cancel, list)")
    lease_ttl_s: int = Field(60, ge=5, description="a job's lease lapses this long after its worker died")
    visibility_timeout_s: int = Field(7 * 24 * 3600, ge=60, description="broker re-delivery of unacked messages; "
                                      "longer than the longest job")
    max_attempts: int = Field(3, ge=1, description="deliveries after which a job whose worker keeps dying fails")
    worker_heartbeat_s: float = Field(5.0, gt=0)

    @property
    def redis(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def datasets(self) -> Path:
        return self.dataset_root or self.data_dir / "datasets"

    @property
    def artifacts(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def cache(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

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
