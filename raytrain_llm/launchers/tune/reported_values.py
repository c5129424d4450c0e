"""How the sweep's table and plots read and print a reported value."""
from __future__ import annotations

import math
from typing import Any


def finite(v: Any) -> bool:
    """A real number that is not NaN or infinite (bools are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any) -> str:
    """A table cell: 4 significant digits for floats, empty for None."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)
