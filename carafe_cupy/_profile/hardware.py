"""Every hardware constant the cost model uses, with its public source.

Vendor figures come from NVIDIA's datasheets and architecture whitepapers and
from the CUDA C++ Programming Guide's table of compute capabilities. L2
bandwidth and DRAM latency are not published per product; the figures here say
how they were derived. ``benchmarks/gpu_validate.sh --part calibrate`` puts the
model next to ncu's measurements on a real GPU, which is where to correct them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PROGRAMMING_GUIDE = (
    "CUDA C++ Programming Guide, 'Technical Specifications per Compute Capability' "
    "(warps, blocks, registers and shared memory per SM; 1 KB reserved per block from sm_80)"
)
OCCUPANCY_HEADER = (
    "cuda_occupancy.h in the CUDA toolkit (register allocation unit 256 per warp, "
    "4 sub-partitions per SM, shared memory allocation unit 128 B)"
)
A100_L2_PER_CLOCK = 5120  # bytes per clock, A100 whitepaper ("L2 cache read bandwidth")
A100_SMS = 108
DRAM_LATENCY_SOURCE = (
    "CUDA C++ Best Practices Guide, 'Device Memory Spaces': device memory costs hundreds of "
    "cycles (400-800); the midpoint is used until gpu_validate.sh measures it"
)
SHARED_PATH_SOURCE = (
    "CUDA C++ Programming Guide, shared memory of compute capability 7.x-9.0: 32 banks of "
    "32 bits per clock, so one 128-byte wavefront per clock per SM, shared with the L1's "
    "global accesses"
)
LATENCY_ASSUMPTION = (
    "assumptions until gpu_validate.sh measures them: shared memory and an L1 hit about 30 "
    "cycles, an L2 hit about 2/5 of a DRAM access, MUFU/LDC/S2R results and a store's "
    "register read about 20 cycles (microbenchmark papers report 20-35, 200-300 and 15-30)"
)
ACHIEVABLE_DRAM_SOURCE = (
    "assumption until gpu_validate.sh measures it: a device-to-device copy reaches about "
    "3.0 of the H100 SXM's 3.35 TB/s (90%); the same share is assumed for A100's HBM2e and "
    "80% for T4's GDDR6"
)
CUPY_LAUNCH_US = 10.0
CUPY_LAUNCH_SOURCE = (
    "assumption until a GPU measures it: CuPy's RawKernel call with this project's 20-40 "
    "numpy-scalar arguments (argument packing, device and stream context) plus "
    "cuLaunchKernel, about 10 µs per launch"
)


@dataclass(frozen=True)
class GpuModel:
    """One GPU product as the cost model sees it."""

    key: str
    name: str
    arch: str  # NVRTC target
    sms: int
    boost_clock_ghz: float
    hbm_gb_per_s: float  # DRAM bandwidth, 1e9 bytes/s
    l2_gb_per_s: float
    l2_bytes: int
    issue_per_clock_per_sm: int  # warp-instructions: one per scheduler, four schedulers
    max_warps_per_sm: int
    max_blocks_per_sm: int
    registers_per_sm: int
    shared_per_sm: int  # the largest carveout
    shared_per_block_max: int  # with the opt-in
    shared_reserved_per_block: int
    dram_latency_cycles: int
    sources: tuple[tuple[str, str], ...]  # (which constants, where they come from)
    achievable_dram_share: float = 0.9  # of hbm_gb_per_s, what streaming code reaches
    shared_bytes_per_clock: int = 128  # the SM's shared-memory / L1 data path
    shared_latency_cycles: int = 30  # an LDS, or an L1 hit, with nothing queued
    l2_latency_cycles: int = 240
    other_latency_cycles: int = 20  # MUFU, conversions, LDC, S2R; a store's operand read

    def as_dict(self) -> dict:
        data = asdict(self)
        data["sources"] = {what: where for what, where in self.sources}
        return data


def _l2_scaled_from_a100(sms: int, clock_ghz: float) -> float:
    """A100's published L2 bytes/clock per SM, scaled to another GPU's SMs and clock."""
    return A100_L2_PER_CLOCK / A100_SMS * sms * clock_ghz


REGISTER_ALLOCATION_UNIT = 256  # registers, per warp
SUB_PARTITIONS = 4
SHARED_ALLOCATION_UNIT = 128  # bytes
WARP_SIZE = 32
SECTOR_BYTES = 32

GPUS: dict[str, GpuModel] = {
    "h100": GpuModel(
        key="h100",
        name="NVIDIA H100 SXM5 80GB",
        arch="sm_90",
        sms=132,
        boost_clock_ghz=1.98,
        hbm_gb_per_s=3350.0,
        l2_gb_per_s=_l2_scaled_from_a100(132, 1.98) / 2,
        l2_bytes=50 * 2**20,
        issue_per_clock_per_sm=4,
        max_warps_per_sm=64,
        max_blocks_per_sm=32,
        registers_per_sm=65536,
        shared_per_sm=228 * 1024,
        shared_per_block_max=227 * 1024,
        shared_reserved_per_block=1024,
        dram_latency_cycles=600,
        sources=(
            ("sms, hbm_gb_per_s, l2_bytes", "NVIDIA H100 Tensor Core GPU datasheet (SXM: "
             "132 SMs, 3.35 TB/s HBM3, 50 MB L2)"),
            ("boost_clock_ghz", "NVIDIA H100 Tensor Core GPU Architecture whitepaper "
             "(H100 SXM5 boost clock 1.98 GHz for non-tensor work)"),
            ("l2_gb_per_s", "derived: A100 whitepaper's 5120 B/clk over 108 SMs, scaled to "
             "132 SMs at 1.98 GHz (NVIDIA publishes no H100 figure), then halved: an SASS-level "
             "audit judged the scaled figure about 2x optimistic for H100's partitioned L2; "
             "an assumption until gpu_validate.sh measures it"),
            ("issue_per_clock_per_sm", "H100 whitepaper: four warp schedulers per SM, "
             "one warp-instruction per clock each"),
            ("max_warps_per_sm, max_blocks_per_sm, registers_per_sm, shared_*",
             PROGRAMMING_GUIDE + " (compute capability 9.0: 64 warps, 32 blocks, 64K "
             "registers, 228 KB shared per SM, 227 KB per block)"),
            ("dram_latency_cycles", DRAM_LATENCY_SOURCE),
            ("shared_bytes_per_clock", SHARED_PATH_SOURCE),
            ("shared_latency_cycles, l2_latency_cycles, other_latency_cycles",
             LATENCY_ASSUMPTION),
            ("achievable_dram_share", ACHIEVABLE_DRAM_SOURCE),
        ),
    ),
    "a100": GpuModel(
        key="a100",
        name="NVIDIA A100 SXM4 80GB",
        arch="sm_80",
        sms=108,
        boost_clock_ghz=1.41,
        hbm_gb_per_s=2039.0,
        l2_gb_per_s=A100_L2_PER_CLOCK * 1.41,
        l2_bytes=40 * 2**20,
        issue_per_clock_per_sm=4,
        max_warps_per_sm=64,
        max_blocks_per_sm=32,
        registers_per_sm=65536,
        shared_per_sm=164 * 1024,
        shared_per_block_max=163 * 1024,
        shared_reserved_per_block=1024,
        dram_latency_cycles=600,
        sources=(
            ("sms, boost_clock_ghz, l2_bytes", "NVIDIA A100 Tensor Core GPU Architecture "
             "whitepaper (108 SMs, 1410 MHz boost, 40 MB L2)"),
            ("hbm_gb_per_s", "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM: 2,039 GB/s)"),
            ("l2_gb_per_s", "A100 whitepaper: L2 read bandwidth 5120 bytes/clk, at 1.41 GHz"),
            ("issue_per_clock_per_sm", "A100 whitepaper: four warp schedulers per SM"),
            ("max_warps_per_sm, max_blocks_per_sm, registers_per_sm, shared_*",
             PROGRAMMING_GUIDE + " (compute capability 8.0: 64 warps, 32 blocks, 64K "
             "registers, 164 KB shared per SM, 163 KB per block)"),
            ("dram_latency_cycles", DRAM_LATENCY_SOURCE),
            ("shared_bytes_per_clock", SHARED_PATH_SOURCE),
            ("shared_latency_cycles, l2_latency_cycles, other_latency_cycles",
             LATENCY_ASSUMPTION),
            ("achievable_dram_share", ACHIEVABLE_DRAM_SOURCE),
        ),
    ),
    "t4": GpuModel(
        key="t4",
        name="NVIDIA T4",
        arch="sm_75",
        sms=40,
        boost_clock_ghz=1.59,
        hbm_gb_per_s=320.0,
        l2_gb_per_s=_l2_scaled_from_a100(40, 1.59),
        l2_bytes=4 * 2**20,
        issue_per_clock_per_sm=4,
        max_warps_per_sm=32,
        max_blocks_per_sm=16,
        registers_per_sm=65536,
        shared_per_sm=64 * 1024,
        shared_per_block_max=64 * 1024,
        shared_reserved_per_block=0,
        dram_latency_cycles=600,
        achievable_dram_share=0.8,
        sources=(
            ("sms, boost_clock_ghz, hbm_gb_per_s", "NVIDIA T4 datasheet and NVIDIA Turing "
             "GPU Architecture whitepaper (40 SMs, 1590 MHz boost, 320 GB/s GDDR6)"),
            ("l2_bytes", "NVIDIA Turing GPU Architecture whitepaper (TU104: 4 MB L2)"),
            ("l2_gb_per_s", "derived: A100 whitepaper's 5120 B/clk over 108 SMs, scaled to "
             "40 SMs at 1.59 GHz (NVIDIA publishes no T4 figure)"),
            ("issue_per_clock_per_sm", "Turing whitepaper: four warp schedulers per SM"),
            ("max_warps_per_sm, max_blocks_per_sm, registers_per_sm, shared_*",
             PROGRAMMING_GUIDE + " (compute capability 7.5: 32 warps, 16 blocks, 64K "
             "registers, 64 KB shared per SM and per block)"),
            ("dram_latency_cycles", DRAM_LATENCY_SOURCE),
            ("shared_bytes_per_clock", SHARED_PATH_SOURCE),
            ("shared_latency_cycles, l2_latency_cycles, other_latency_cycles",
             LATENCY_ASSUMPTION),
            ("achievable_dram_share", ACHIEVABLE_DRAM_SOURCE),
        ),
    ),
}


def gpu(key: str) -> GpuModel:
    """The model for ``key`` ("h100", "a100", "t4"); ValueError names the known ones."""
    try:
        return GPUS[key.strip().lower()]
    except KeyError:
        raise ValueError(f"--gpu must be among {', '.join(GPUS)}, got {key!r}") from None
