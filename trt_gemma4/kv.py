"""The paged KV cache in TensorRT-LLM 1.2's layout — the contract between the torch backend and our kernels.

Source of the layout: research/trtllm_attention.md §2.3–§4.2 (TRT-LLM `kvCacheManager.h`, `kvCacheUtils.h`,
`WindowBlockManager::setOffsets`):

* One pool per (attention window, KV-head count). A pool tensor is
  ``[num_blocks, layers_in_pool, 2 (K|V), kv_heads, tokens_per_block, head_size]`` in the KV dtype.
* ``block_offsets[seq, kv, logical_block]`` (int32) as TRT-LLM writes them: ``(mem_block * layers_in_pool) * 2 + kv``.
  Viewing the pool as "units" ``[num_blocks * layers_in_pool * 2, kv_heads, T, D]``, the unit of layer
  ``lip`` is ``block_offsets[...] + lip * 2`` (TRT-LLM shifts the pool base by ``lip * 2 * bytesPerBlock``).
* Element (head h, token t, dim d) in a unit: ``h * T * D + (t % T) * D + d``.
* One head size for the model (the sliding one, 256 on the 12B). A global layer's single 512-d head is stored as
  two 256-d "heads" (planes): dims 0–255 in plane 0, 256–511 in plane 1 (same bytes as one 512-d head).
* Sliding layers keep a cyclic ring: token position p lives at slot ``p % cyclic_len`` with
  ``cyclic_len = window`` (beam width 1: TRT-LLM's ``KVBlockArray::getKVTokenIdx``). Global layers: slot = p.
* FP8 storage: written ``fp8(x * scale_orig_quant)``, read ``fp8 * scale_quant_orig`` (``= kv_scale``; 1.0 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


@dataclass
class KVPool:
    """One pool: the layers of one window size that share one KV-head count."""

    layers: list[int]  # model layer indices stored in this pool, in pool order (lip = position here)
    kv_heads: int  # declared heads per layer (planes for a global layer)
    head_size: int
    tokens_per_block: int
    num_blocks: int
    dtype: torch.dtype
    device: torch.device | str = "cpu"
    cyclic_len: int | None = None  # ring length for sliding layers; None = linear (global layers)
    data: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        T = self.tokens_per_block
        if T <= 0 or T & (T - 1):
            raise ValueError(f"tokens_per_block must be a power of two (TRT-LLM KVBlockArray), got {T}")
        shape = (self.num_blocks, len(self.layers), 2, self.kv_heads, T, self.head_size)
        self.data = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._free = list(range(self.num_blocks - 1, -1, -1))

    @property
    def units(self) -> torch.Tensor:
        """The pool seen as TRT-LLM's addressing units: [num_blocks * layers * 2, kv_heads, T, D]."""
        return self.data.view(-1, self.kv_heads, self.tokens_per_block, self.head_size)

    def lip(self, layer: int) -> int:
        return self.layers.index(layer)

    def alloc_block(self) -> int:
        if not self._free:
            raise RuntimeError("KV pool is out of blocks")
        return self._free.pop()

    def free_block(self, b: int) -> None:
        self._free.append(b)

    def blocks_for(self, num_tokens: int) -> int:
        """Logical blocks a sequence of num_tokens needs in this pool (the ring caps it)."""
        n = min(num_tokens, self.cyclic_len) if self.cyclic_len else num_tokens
        return -(-n // self.tokens_per_block)

    def slot(self, positions: torch.Tensor) -> torch.Tensor:
        return positions % self.cyclic_len if self.cyclic_len else positions


def block_offset(mem_block: int, layers_in_pool: int, kv: int) -> int:
    """TRT-LLM's KVCacheIndex value for (memory block, K or V): flat_index3(block, 0, kv, layers, 2)."""
    return (mem_block * layers_in_pool) * 2 + kv


def _units_and_slots(
    pool: KVPool, offsets: torch.Tensor, layer: int, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """offsets: int32 [2, max_blocks] of one sequence. Returns unit index for K, for V, and in-block slot."""
    T = pool.tokens_per_block
    s = pool.slot(positions.long())
    blk = s // T
    lip2 = pool.lip(layer) * 2
    k_unit = offsets[0].long()[blk] + lip2
    v_unit = offsets[1].long()[blk] + lip2
    return k_unit, v_unit, s % T


def to_planes(x: torch.Tensor, head_size: int) -> torch.Tensor:
    """[n, kv_heads, hd] -> [n, kv_heads * hd / head_size, head_size] (a 512-d head as two 256-d planes)."""
    n = x.shape[0]
    return x.reshape(n, -1, head_size)


def quantize(x: torch.Tensor, dtype: torch.dtype, scale_orig_quant: float) -> torch.Tensor:
    if dtype == FP8:
        return (x.float() * scale_orig_quant).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return x.to(dtype)


def dequantize(x: torch.Tensor, scale_quant_orig: float, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if x.dtype == FP8:
        return (x.float() * scale_quant_orig).to(out_dtype)
    return x.to(out_dtype)


def write_kv(
    pool: KVPool,
    offsets: torch.Tensor,
    layer: int,
    positions: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Store K/V of tokens at `positions` of one sequence. k, v: [n, kv_heads, hd] (hd may be a multiple of D)."""
    k_unit, v_unit, t = _units_and_slots(pool, offsets, layer, positions)
    kp = to_planes(k, pool.head_size)
    vp = to_planes(v, pool.head_size)
    units = pool.units
    units[k_unit, :, t, :] = quantize(kp, pool.dtype, 1.0 / k_scale)
    units[v_unit, :, t, :] = quantize(vp, pool.dtype, 1.0 / v_scale)


def read_kv(
    pool: KVPool,
    offsets: torch.Tensor,
    layer: int,
    positions: torch.Tensor,
    head_dim: int,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read K/V of tokens at `positions` of one sequence as [n, kv_heads_real, head_dim] in out_dtype."""
    k_unit, v_unit, t = _units_and_slots(pool, offsets, layer, positions)
    units = pool.units
    n = positions.shape[0]
    k = dequantize(units[k_unit, :, t, :], k_scale, out_dtype).reshape(n, -1, head_dim)
    v = dequantize(units[v_unit, :, t, :], v_scale, out_dtype).reshape(n, -1, head_dim)
    return k, v
