from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter

from api.schemas import Catalog
from kdcore.datasets import dataset_catalog
from kdcore.methods import method_catalog
from kdcore.models import model_catalog

router = APIRouter(prefix="/v1", tags=["catalog"])


@lru_cache(maxsize=1)
def _catalog() -> Catalog:  # the registries are fixed once the process has imported them
    return Catalog(architectures=model_catalog(), datasets=dataset_catalog(), methods=method_catalog())


@router.get("/catalog", response_model=Catalog, summary="Architectures, datasets and methods, with their parameters")
def catalog() -> Catalog:
    return _catalog()
