import os

from hypothesis import settings

# The reference backend loops over time in Python: keep generated cases few and deadline-free.
settings.register_profile("xscan", max_examples=int(os.environ.get("XSCAN_HYPOTHESIS_EXAMPLES", "12")),
                          deadline=None, derandomize=True)
settings.load_profile("xscan")
