"""Device catalog: peak speed, memory and memory bandwidth of common accelerators, from data sheets.

Conventions (the same for every entry):
    fp32_flops  dense FP32 peak on the CUDA cores (not TF32 tensor-core math), FLOP/s.
    fp16_flops  dense FP16/BF16 tensor-core peak with FP32 accumulate where the sheet gives it,
                **without** 2:4 structured sparsity (sheets that print "1,979*" with sparsity
                are halved here), FLOP/s.
    memory      the sheet's capacity read as binary units: "16 GB HBM2" is 16 GiB = 17179869184
                bytes, because HBM and GDDR chips come in powers of two and a V100-16GB does hold
                16 GiB. The driver, ECC and the CUDA context keep a little of it (nvidia-smi shows
                e.g. 16160 MiB on a V100-16GB), so a placement that fills a device to the last
                byte may still fail; set ``memory:`` in a cluster YAML for the exact usable figure.
    memory_bandwidth  the sheet's peak, SI units (900 GB/s = 9e11 bytes/s).

Peaks are what the chips can reach, not what a training step sustains; the cost model applies
its own efficiency factors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rlplace.cluster import ACCELERATOR, CPU, Device
from rlplace.errors import RlplaceError

_TERA = 1e12
_GIB = 2**30
_GB_S = 1e9


@dataclass(frozen=True)
class CatalogEntry:
    """One device model as its data sheet describes it (units as in `Device`).

    Attributes:
        kind: catalog name (``V100-32GB``).
        category: ``"accelerator"`` or ``"cpu"``.
        fp32_flops: dense FP32 peak, FLOP/s.
        fp16_flops: dense FP16/BF16 tensor-core peak (no sparsity), FLOP/s.
        memory: bytes (sheet capacity read as GiB, see the module docstring).
        memory_bandwidth: bytes/s.
        source: the data sheet the numbers come from.
    """

    kind: str
    category: str
    fp32_flops: float
    fp16_flops: float
    memory: float
    memory_bandwidth: float
    source: str

    def device(self, name: str, host: int = 0) -> Device:
        """A `Device` of this kind called ``name`` on ``host``."""
        return Device(
            name=name,
            kind=self.kind,
            category=self.category,
            fp32_flops=self.fp32_flops,
            fp16_flops=self.fp16_flops,
            memory=self.memory,
            memory_bandwidth=self.memory_bandwidth,
            host=host,
        )


def _gpu(kind: str, fp32_tflops: float, fp16_tflops: float, memory_gib: int, bandwidth_gb_s: float, source: str) -> CatalogEntry:
    return CatalogEntry(kind, ACCELERATOR, fp32_tflops * _TERA, fp16_tflops * _TERA, memory_gib * _GIB, bandwidth_gb_s * _GB_S, source)


_V100_SHEET = "NVIDIA Tesla V100 data sheet (2017/2018): SXM2 15.7 FP32 / 125 tensor TFLOPS, PCIe 14 / 112, HBM2 900 GB/s"
_A100_SHEET = "NVIDIA A100 Tensor Core GPU data sheet (2021): 19.5 FP32, 312 FP16 tensor (624 with sparsity); 40GB HBM2 1,555 GB/s; 80GB HBM2e SXM 2,039 GB/s, PCIe 1,935 GB/s"
_H100_SHEET = "NVIDIA H100 Tensor Core GPU data sheet (2022): SXM 67 FP32, 1,979 FP16 tensor with sparsity, 3.35 TB/s; PCIe 51 FP32, 1,513 with sparsity, 2 TB/s"
_H200_SHEET = "NVIDIA H200 Tensor Core GPU data sheet (2024): SXM 67 FP32, 1,979 FP16 tensor with sparsity, 141 GB HBM3e, 4.8 TB/s"
_B200_SHEET = (
    "NVIDIA HGX B200 specifications (2024, nvidia.com/en-us/data-center/hgx): 8 GPUs, FP16/BF16 tensor 36 PFLOPS with sparsity, "
    "FP32 600 TFLOPS, 1,440 GB HBM3e, 64 TB/s (per GPU: 4.5 PF sparse, 75-80 FP32, 180 GB, 8 TB/s)"
)
_L40S_SHEET = "NVIDIA L40S GPU data sheet (2023): 91.6 FP32, 362.05 FP16 tensor (733 with sparsity), 48 GB GDDR6 with ECC, 864 GB/s"
_MI300X_SHEET = "AMD Instinct MI300X accelerator data sheet (2023): 81.7 FP32 vector, 1,307.4 FP16 matrix (2,614.9 with sparsity), 192 GB HBM3, 5.3 TB/s"

_ENTRIES = (
    # Tesla V100 SXM2 (NVLink) and PCIe, 16 or 32 GB HBM2; FP16 = tensor-core mixed precision.
    _gpu("V100-16GB", 15.7, 125, 16, 900, _V100_SHEET),
    _gpu("V100-32GB", 15.7, 125, 32, 900, _V100_SHEET),
    _gpu("V100-PCIe-16GB", 14, 112, 16, 900, _V100_SHEET),
    _gpu("V100-PCIe-32GB", 14, 112, 32, 900, _V100_SHEET),
    # A100 SXM4 (NVLink) and PCIe; the sheet's FP16 tensor 312 is dense (624 is with sparsity).
    _gpu("A100-40GB", 19.5, 312, 40, 1555, _A100_SHEET),
    _gpu("A100-80GB", 19.5, 312, 80, 2039, _A100_SHEET),
    _gpu("A100-PCIe-40GB", 19.5, 312, 40, 1555, _A100_SHEET),
    _gpu("A100-PCIe-80GB", 19.5, 312, 80, 1935, _A100_SHEET),
    # H100 SXM5 80GB HBM3 and H100 PCIe 80GB HBM2e; sheet FP16 1,979 / 1,513 are with sparsity.
    _gpu("H100", 67, 989, 80, 3350, _H100_SHEET),
    _gpu("H100-PCIe", 51, 756, 80, 2000, _H100_SHEET),
    # NVIDIA T4 data sheet (2019): 8.1 FP32, 65 FP16/FP32 mixed precision, 16 GB GDDR6, 320+ GB/s.
    _gpu("T4", 8.1, 65, 16, 320, "NVIDIA T4 Tensor Core GPU data sheet (2019): 8.1 FP32, 65 mixed-precision TFLOPS, 16 GB GDDR6, 320+ GB/s"),
    # NVIDIA A10 data sheet (2021): 31.2 FP32, 125 FP16 tensor (250 with sparsity), 24 GB GDDR6, 600 GB/s.
    _gpu("A10", 31.2, 125, 24, 600, "NVIDIA A10 Tensor Core GPU data sheet (2021): 31.2 FP32, 125 FP16 tensor (250 with sparsity), 24 GB GDDR6, 600 GB/s"),
    # A10G: AWS's variant of the A10 in EC2 G5 instances. It has no NVIDIA sheet; AWS gives 35 FP32
    # and 70 FP16 tensor TFLOPS (faster CUDA cores, half-rate tensor cores) with the A10's
    # 24 GB / 600 GB/s; see baseten.co "NVIDIA A10 vs A10G for ML model inference".
    _gpu("A10G", 35, 70, 24, 600, "AWS EC2 G5 (A10G): 35 FP32, 70 FP16 tensor TFLOPS, 24 GB GDDR6, 600 GB/s (via baseten.co A10 vs A10G)"),
    # NVIDIA L4 data sheet (2023): 30.3 FP32, 242 FP16 tensor with sparsity (121 dense), 24 GB GDDR6, 300 GB/s.
    _gpu("L4", 30.3, 121, 24, 300, "NVIDIA L4 Tensor Core GPU data sheet (2023): 30.3 FP32, 242 FP16 tensor with sparsity, 24 GB GDDR6, 300 GB/s"),
    # H200 SXM 141GB HBM3e: Hopper's compute (the H100 SXM numbers) with more and faster memory.
    # The sheet's 141 GB is already the usable part of six 24 GiB stacks; nvidia-smi shows
    # 143,771 MiB = 140.4 GiB, so 140 GiB here (not the 141 GiB the binary reading would give).
    _gpu("H200", 67, 989, 140, 4800, _H200_SHEET),
    # HGX B200 (1,000 W) per GPU: the sheet's 8-GPU totals divided by 8 (FP16/BF16 36 PFLOPS with
    # sparsity -> 2,250 dense; FP32 600 -> 75); 180 GB per GPU shows as ~179 GiB in nvidia-smi.
    _gpu("B200", 75, 2250, 179, 8000, _B200_SHEET),
    # L40S (Ada, PCIe): FP16 tensor 362.05 dense (733 with sparsity); 48 GB GDDR6 with ECC.
    _gpu("L40S", 91.6, 362.05, 48, 864, _L40S_SHEET),
    # AMD Instinct MI300X (OAM): FP32 vector 81.7 (163.4 is FP32 matrix), FP16 matrix 1,307.4 dense
    # (2,614.9 with sparsity); 192 GB HBM3 = eight 24 GiB stacks; 5.3 TB/s.
    _gpu("MI300X", 81.7, 1307.4, 192, 5300, _MI300X_SHEET),
    # A generic two-socket-class server CPU, not a sheet: 32 cores x 2 GHz x 32 FP32 FLOP/cycle
    # (one AVX-512 FMA unit) ~ 2 TFLOPS, no tensor cores (FP16 = FP32), 256 GiB of DDR4 on
    # 8 channels x DDR4-3200 = 204.8 GB/s ~ 200 GB/s.
    CatalogEntry("cpu", CPU, 2 * _TERA, 2 * _TERA, 256 * _GIB, 200 * _GB_S, "generic server CPU: 32 cores x 2 GHz x 32 FLOP/cycle, 8 x DDR4-3200"),
)

#: Catalog entries by kind, in the order above.
CATALOG: Mapping[str, CatalogEntry] = {entry.kind: entry for entry in _ENTRIES}

_BY_LOWER_NAME = {kind.lower(): entry for kind, entry in CATALOG.items()}


def known_kinds() -> list[str]:
    """Every catalog kind, in catalog order."""
    return list(CATALOG)


def lookup_kind(kind: str, field: str = "kind") -> CatalogEntry:
    """The catalog entry called ``kind`` (case does not matter); `RlplaceError` listing the kinds otherwise."""
    entry = _BY_LOWER_NAME.get(kind.lower()) if isinstance(kind, str) else None
    if entry is None:
        raise RlplaceError(f"{field}: unknown device kind {kind!r}; known kinds: {', '.join(known_kinds())}")
    return entry


def catalog_device(kind: str, name: str, host: int = 0) -> Device:
    """A `Device` of catalog ``kind`` called ``name`` on ``host``."""
    return lookup_kind(kind).device(name, host)
