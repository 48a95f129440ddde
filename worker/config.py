"""Settings shared by every part of the service, from `KD_*` environment variables (pydantic-settings).

This is the one settings module below both the API and the worker: the worker reads these fields, and
the API's settings (`api.settings.Settings`) extend them with what only the API needs (keys, upload and
body limits, tenant limits, threads). Tests override a field by passing it to the constructor.
kdcore reads none of them: the worker hands the library its device, threads and paths as arguments.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KD_", extra="ignore")

    redis_url: str | None = Field(None, description="redis://host:port/db; `distillery up` starts its own if unset")
    data_dir: Path = Path("data")
    dataset_root: Path | None = Field(None, description="default <data_dir>/datasets")
    artifact_dir: Path | None = Field(None, description="uploads and job outputs; default <data_dir>/artifacts. "
                                      "Must be shared by the API and every worker")
    allow_download: bool = Field(False, description="let workers download public datasets missing from the root")
    prepared_dir: Path | None = Field(None, description="uploaded image datasets decoded once into memory-mapped "
                                      "shards (kdcore.datasets.store), reused by later jobs; default "
                                      "<data_dir>/prepared; local to each worker host, safe to delete when idle")
    cache_dir: Path | None = Field(None, description="teacher outputs kept for later jobs on the same teacher and "
                                   "data (kdcore.teacher_cache); default <data_dir>/cache; safe to delete any time")
    teacher_cache_max_bytes: int = Field(2 * 1024**3, ge=0, description="largest teacher-output cache per job "
                                         "(logits and features of the train split, bytes): logits kept as fp32, "
                                         "else bf16, else top-k + rest mass (many classes), else the teacher "
                                         "runs at every step; the report names the path taken")
    lease_ttl_s: int = Field(60, ge=5, description="a job's lease lapses this long after its worker died")
    visibility_timeout_s: int = Field(7 * 24 * 3600, ge=60, description="broker re-delivery of unacked messages; "
                                      "longer than the longest job")
    max_attempts: int = Field(3, ge=1, description="deliveries after which a job whose worker keeps dying fails")
    worker_heartbeat_s: float = Field(5.0, gt=0, description="how often a worker proves it consumes, and sweeps")
    unsent_grace_s: float = Field(10.0, ge=0, description="a job written but not confirmed sent this long ago "
                                  "lost its API process; a worker's sweep sends it")
    worker_device: str | None = Field(None, description="the device this worker trains on, e.g. cuda:1; set by "
                                      "`distillery worker --device`. Unset: cuda when there is one, else cpu")
    storage_url: str | None = Field(None, description="shared storage for uploads, job outputs and prepared "
                                    "datasets, any fsspec URL (file:///mnt/shared/kd, s3://bucket/kd with s3fs); "
                                    "unset: the local artifact and prepared dirs are the storage. Set, each host "
                                    "copies what it reads into its local dirs (the prepared shards memory-mapped "
                                    "there) and publishes what it writes")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per job; unset: the CPUs "
                                      "this process may use (affinity and cgroup quota)")
    webhook_allow_hosts: str = Field("", description="where job webhooks (`notify.url`) may go: comma-separated "
                                     "host names and IP networks (10.0.0.0/8, 192.0.2.7); empty: none is sent")
    webhook_timeout_s: float = Field(5.0, gt=0, le=120, description="one webhook POST's connect+read limit")
    webhook_max_attempts: int = Field(6, ge=1, le=50, description="POSTs of one webhook before giving up")
    webhook_retry_base_s: float = Field(2.0, gt=0, description="wait before the first retry; doubled each "
                                        "time (2, 4, 8, ... s, at most 10 minutes)")

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
    def prepared(self) -> Path:
        return self.prepared_dir or self.data_dir / "prepared"

    @property
    def cache(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"


@lru_cache
def get_settings() -> WorkerSettings:
    return WorkerSettings()
