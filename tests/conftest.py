"""Hypothesis profiles: ``ci`` (reproducible), ``dev`` (the local default), ``explore`` (long).

Pick one with the ``HYPOTHESIS_PROFILE`` environment variable; ``.ci/run`` exports ``ci``.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=200, derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=300, deadline=None, print_blob=True)
settings.register_profile("explore", max_examples=5000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
