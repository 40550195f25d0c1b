"""rlplace: learned device placement of deep-learning training graphs on accelerator clusters."""

from __future__ import annotations

__version__ = "0.1.0"
