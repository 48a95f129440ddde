"""Distillation methods, one module per method with its loss beside it (mdistiller's layout).

base.py holds the interface (`Distiller`, `TeacherOutput`), the `METHODS` registry and `register_method`;
none.py, kd.py, dkd.py, fitnets.py, at.py and dml.py one method each; feature_base.py what FitNets and
AT share. Importing this package imports every method module, which registers it.
"""
from kdcore.methods import at, dkd, dml, fitnets, kd, none  # noqa: F401  (imported to register the methods)
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

__all__ = ["METHODS", "Distiller", "ExtraStudent", "ModelFactory", "TeacherOutput", "Terms", "method_catalog",
           "register_method"]
