"""The four fusion networks built on xscan (installed as ``xscan.models``)."""
