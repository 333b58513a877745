"""Every field of every k4d_msgs interface survives a CDR serialisation round trip."""
import array

import pytest

pytest.importorskip("rclpy")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from k4d_msgs.msg import ImaginedRollout, PointmapSequence, SamplingSettings, ShadowEvalResult  # noqa: E402
from k4d_msgs.action import Imagine  # noqa: E402

_PRIMS = {
    "boolean": lambda i: i % 2 == 1, "string": lambda i: f"v{i}",
    "float": lambda i: 0.5 + i, "double": lambda i: 0.25 + i,
    "uint8": lambda i: (7 + i) % 256, "octet": lambda i: bytes([(7 + i) % 256]),
    "int8": lambda i: -3 - (i % 100), "uint16": lambda i: 9 + i, "int16": lambda i: -9 - i,
    "uint32": lambda i: 11 + i, "int32": lambda i: -11 - i, "uint64": lambda i: 13 + i, "int64": lambda i: -13 - i,
}


def _fill(msg, depth=0, counter=[0]):
    """Set every field of msg (recursively) to a distinctive non-default value."""
    for name, typ in msg.get_fields_and_field_types().items():
        counter[0] += 1
        i = counter[0]
        seq = typ.startswith("sequence<")
        arr = "[" in typ
        base = typ[len("sequence<"):-1].split(",")[0] if seq else typ.split("[")[0]
        if base in _PRIMS:
            val = _PRIMS[base](i)
            if seq:
                setattr(msg, name, [_PRIMS[base](i + k) for k in range(2)])
            elif arr:
                n = int(typ.split("[")[1].rstrip("]"))
                setattr(msg, name, [_PRIMS[base](i + k) for k in range(n)])
            else:
                setattr(msg, name, val)
            continue
        cls = type(getattr(msg, name)) if not (seq or arr) else None
        if cls is None:
            pkg, _, t = base.partition("/")
            mod = __import__(f"{pkg}.msg", fromlist=[t])
            cls = getattr(mod, t)
        if seq:
            items = []
            for _ in range(2):
                child = cls()
                if depth < 4:
                    _fill(child, depth + 1, counter)
                items.append(child)
            setattr(msg, name, items)
        else:
            child = getattr(msg, name)
            if depth < 4:
                _fill(child, depth + 1, counter)
    return msg


@pytest.mark.parametrize("cls", [SamplingSettings, PointmapSequence, ImaginedRollout, ShadowEvalResult,
                                 Imagine.Goal, Imagine.Result, Imagine.Feedback])
def test_round_trip_every_field(cls):
    msg = _fill(cls())
    assert msg != cls(), "filling must change the message"
    back = deserialize_message(serialize_message(msg), cls)
    assert back == msg
    # spot-check that nested sequences really carried data
    for name, typ in msg.get_fields_and_field_types().items():
        if typ.startswith("sequence<"):
            v = getattr(back, name)
            assert len(v) == 2, name
            if isinstance(v, array.array):
                assert list(v) == list(getattr(msg, name))


def test_documented_constants():
    assert PointmapSequence.SOURCE_PLAN == 2 and PointmapSequence.SOURCE_POLICY == 3
    assert Imagine.Goal.CONDITION_TRAJECTORY == 1
    assert Imagine.Result.ERROR_OUT_OF_MEMORY == 2
    assert ImaginedRollout.QUALITY_FAILED == 3
    assert SamplingSettings.CFG_RELEASED == 1
