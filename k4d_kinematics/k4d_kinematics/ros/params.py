"""Declare a node's ROS parameters from a dataclass config, with descriptors and validation.

One dataclass per core is the single source of parameter names, defaults and descriptions, so YAML
files, launch files and code agree. Field metadata keys: ``description`` (str), ``read_only`` (bool); a field
without a ``description`` is described by its entry in the ``Attributes:`` section of its class's docstring
(``attribute_docs``), so a ROS-free config documented the Google way needs no metadata.
Validation lives in the dataclass's ``__post_init__`` (ValueError naming the field); a parameter
change that fails it is rejected with that reason and the node keeps its previous configuration.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import typing
from typing import Any, Callable, Optional, TypeVar

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.parameter import Parameter

T = TypeVar("T")

_PTYPES = {
    bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER, float: Parameter.Type.DOUBLE, str: Parameter.Type.STRING,
}


def _param_type(tp) -> Parameter.Type:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner, *_rest) = typing.get_args(tp) or (str,)
        return {bool: Parameter.Type.BOOL_ARRAY, int: Parameter.Type.INTEGER_ARRAY,
                float: Parameter.Type.DOUBLE_ARRAY, str: Parameter.Type.STRING_ARRAY}[inner]
    if origin is typing.Union:  # Optional[X] -> X
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _param_type(args[0])
    return _PTYPES[tp]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise ValueError(f"config field {f.name!r} needs a default to become a ROS parameter")


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its text in the ``Attributes:`` section of the docstrings of ``cls`` and its bases (Google
    style, parsed by ``docstring_parser``). An entry may name several fields (``name_a, name_b: text``) or a glob
    (``metric_*``); a field's own entry wins over a glob, and the first class of the MRO that documents a field
    wins over its bases."""
    from docstring_parser import DocstringStyle, parse

    out: dict[str, str] = {}
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    for klass in cls.__mro__:
        doc = klass.__dict__.get("__doc__")
        entries = [(p.arg_name, " ".join((p.description or "").split()).replace("``", "'"))
                   for p in (parse(doc, style=DocstringStyle.GOOGLE).params if doc else [])
                   if p.args and p.args[0] == "attribute"]
        for globs in (False, True):  # a field's own entry wins over a glob that also covers it
            for keys, body in entries:
                for key in (k.strip() for k in keys.split(",")):
                    if ("*" in key) == globs:
                        for name in (fnmatch.filter(names, key) if globs else [key]):
                            out.setdefault(name, body)
    return out


def declare_config(node, cfg_cls: type[T], on_change: Optional[Callable[[T], None]] = None) -> T:
    """Declare one parameter per dataclass field of ``cfg_cls`` and return the validated config.

    ``on_change(new_cfg)`` is called after an accepted ``ros2 param set``; a change that fails
    validation is rejected with the ValueError text as the reason.
    """
    hints = typing.get_type_hints(cfg_cls)
    fields = [f for f in dataclasses.fields(cfg_cls) if f.init]
    documented = attribute_docs(cfg_cls)
    for f in fields:
        default = _default(f)
        if isinstance(default, tuple):
            default = list(default)
        desc = ParameterDescriptor(description=f.metadata.get("description") or documented.get(f.name, ""),
                                   read_only=bool(f.metadata.get("read_only", False)))
        ptype = _param_type(hints[f.name])
        if default is None or (isinstance(default, list) and not default):
            node.declare_parameter(f.name, ptype, desc)
        else:
            node.declare_parameter(f.name, default, desc)

    def current(overrides: dict[str, Any]) -> T:
        values = {}
        for f in fields:
            v = overrides[f.name] if f.name in overrides else node.get_parameter(f.name).value
            if v is None:
                v = _default(f)
            if isinstance(v, (list, tuple)) or type(v).__name__ == "array":
                v = list(v)
                if typing.get_origin(hints[f.name]) is tuple:
                    v = tuple(v)
            values[f.name] = v
        return cfg_cls(**values)

    cfg = current({})

    def _validate(params):
        try:
            new_cfg = current({p.name: p.value for p in params})
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if on_change is not None:
            on_change(new_cfg)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(_validate)
    return cfg
