"""Distillation methods, one module per method with its loss beside it (mdistiller's layout).

base.py holds the interface (`Distiller`, `TeacherOutput`), the `METHODS` registry and `register_method`;
none.py, kd.py, dkd.py, fitnets.py, at.py and dml.py one method each; feature_base.py what FitNets and
AT share. Importing this package imports every module in it (kdcore.registry.import_family), and each
method module registers itself: a new method is one new file.
"""
from kdcore.methods.base import (
    METHODS,
    Distiller,
    ExtraStudent,
    ModelFactory,
    TeacherOutput,
    Terms,
    method_catalog,
    register_method,
)
from kdcore.registry import import_family

import_family(__name__, __path__)

__all__ = ["METHODS", "Distiller", "ExtraStudent", "ModelFactory", "TeacherOutput", "Terms", "method_catalog",
           "register_method"]
