"""The four fusion networks built on xscan (installed as ``xscan.models``).

    from xscan.models import S4Fusion, DIFFMF, FusionMamba, ISFM
    fused = S4Fusion()(ir, vis)        # ir (Bt, 1, H, W), vis (Bt, 1 or 3, H, W), any H, W

Every scan runs through xscan's ops, so ``xscan.use_backend(...)`` picks the kernels. ``losses``
holds the papers' training losses; ``throughput`` measures images/s (used by ``xscan.bench``).
"""
from . import losses
from .diffmf import DIFFMF
from .fusionmamba import FusionMamba
from .isfm import ISFM
from .s4fusion import S4Fusion

MODELS = {"S4Fusion": S4Fusion, "DIFFMF": DIFFMF, "FusionMamba": FusionMamba, "ISFM": ISFM}

__all__ = ["S4Fusion", "DIFFMF", "FusionMamba", "ISFM", "MODELS", "losses"]
