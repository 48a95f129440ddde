"""Pydantic's validation errors, rewritten so that each names a field the way users write it.

A field that takes one of several shapes (the JobSpec's `teacher`: one teacher object or a list of them)
makes pydantic report every shape it tried, with the shape's internal name in the location:
`teacher.function-after[_one_source(), TeacherSpec].input` and `teacher.list[...]: Input should be a valid
list`. Here the internal names leave the locations, the shapes the input plainly did not take (a type
mismatch at the field itself while another shape got further) are dropped, and when no shape fits at
all one entry says which shapes the field takes.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# how pydantic-core names the member of a union in an error location: list[...], function-after[...],
# tagged-union[...], or a model's name when a union holds plain models
_UNION_MEMBER = re.compile(r"^(?:[a-z][a-z0-9_-]*\[.*\]|[A-Z][A-Za-z0-9_]*)$")
# errors that mean "the input is not of this shape at all"
_SHAPE_MISMATCH = {
    "model_attributes_type": "an object", "model_type": "an object", "dict_type": "an object",
    "list_type": "a list", "tuple_type": "a list", "string_type": "a string", "int_type": "an integer",
    "float_type": "a number", "bool_type": "a boolean",
}


def _clean_msg(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _member_index(loc: Sequence[Any]) -> int | None:
    # index 0 is where the value came from (body, query, ...); a union member never stands there
    return next((i for i, part in enumerate(loc) if i > 0 and isinstance(part, str) and _UNION_MEMBER.match(part)),
                None)


def _mismatch(errs: list[dict[str, Any]], where: tuple[Any, ...]) -> bool:
    """This member's only complaint is that the input is not of its shape, at the field itself."""
    return len(errs) == 1 and errs[0]["type"] in _SHAPE_MISMATCH and tuple(errs[0]["loc"]) == where


def user_errors(raw: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{loc, msg, type}] from pydantic's errors, union members resolved as the module docstring says."""
    plain: list[dict[str, Any]] = []
    unions: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    for e in raw:
        loc = list(e.get("loc", ()))
        err = {"loc": loc, "msg": _clean_msg(str(e.get("msg", ""))), "type": e.get("type")}
        i = _member_index(loc)
        if i is None:
            plain.append(err)
            continue
        err["loc"] = loc[:i] + loc[i + 1:]
        unions.setdefault(tuple(loc[:i]), {}).setdefault(loc[i], []).append(err)
    out = plain
    for where, members in unions.items():
        taken = [errs for errs in members.values() if not _mismatch(errs, where)]
        if taken:  # the shapes the input took; nested unions inside them are resolved the same way
            out += user_errors([e for errs in taken for e in errs])
        else:
            shapes = sorted({_SHAPE_MISMATCH[errs[0]["type"]] for errs in members.values()})
            out.append({"loc": list(where), "msg": f"Input should be {' or '.join(shapes)}", "type": "union_type"})
    return out
