"""The GPU whose limits bound occupancy (an H100), and the occupancy of a kernel on it."""
from __future__ import annotations

import dataclasses
import math




@dataclasses.dataclass(frozen=True)
class GPU:
    """The limits that bound occupancy (CUDA occupancy calculator, compute capability 9.0)."""
    name: str = "H100 SXM (sm_90)"
    sms: int = 132
    regs_per_sm: int = 65536
    reg_unit: int = 256                  # registers are allocated per warp, in units of 256
    smem_per_sm: int = 228 * 1024
    smem_unit: int = 128
    smem_reserved_per_block: int = 1024  # the driver's reservation per block (sm_80 and later)
    max_warps: int = 64
    max_blocks: int = 32


H100 = GPU()


def occupancy(regs: int, smem: int, warps_per_block: int, gpu: GPU = H100) -> tuple[int, str]:
    """(resident warps per SM, what limits them) for blocks of warps_per_block warps."""
    regs_per_warp = math.ceil(regs * 32 / gpu.reg_unit) * gpu.reg_unit
    smem_per_block = math.ceil(smem / gpu.smem_unit) * gpu.smem_unit + gpu.smem_reserved_per_block
    limits = {"regs": (gpu.regs_per_sm // regs_per_warp) // warps_per_block if regs else gpu.max_blocks,
              "smem": gpu.smem_per_sm // smem_per_block,
              "warps": gpu.max_warps // warps_per_block,
              "blocks": gpu.max_blocks}
    blocks = min(limits.values())
    return blocks * warps_per_block, next(k for k, v in limits.items() if v == blocks)
