"""A Python client for the Distillery API (httpx; sync and async). It imports no torch, no Celery and no
part of the server, so it is cheap to use from any program that drives jobs.

    from distillery.client import Client
    report = Client("http://127.0.0.1:8000", key).jobs.create("spec.yaml").wait()

The server URL and key default to DISTILLERY_URL and DISTILLERY_API_KEY. A failed request raises
ApiError carrying the server's problem+json; `wait()` on a job that failed or was cancelled raises JobFailed.
"""
from distillery.client.asynchronous import AsyncArtifacts, AsyncClient, AsyncJob, AsyncJobs
from distillery.client.common import KEY_ENV, URL_ENV, load_spec
from distillery.client.errors import ApiError, DistilleryError, JobFailed
from distillery.client.models import Artifact, Event, JobInfo, JobList, Progress, Report, Status
from distillery.client.sync import Artifacts, Client, Job, Jobs

__all__ = ["ApiError", "Artifact", "Artifacts", "AsyncArtifacts", "AsyncClient", "AsyncJob", "AsyncJobs", "Client",
           "DistilleryError", "Event", "Job", "JobFailed", "JobInfo", "JobList", "Jobs", "KEY_ENV", "Progress",
           "Report", "Status", "URL_ENV", "load_spec"]
