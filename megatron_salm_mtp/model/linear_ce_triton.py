"""Triton backend of ``linear_ce.py``: the head's logits stay in registers.

Forward: one program per block of rows and split of the vocabulary shard runs the GEMM tile by
tile and folds each tile into its rows' running max, sum of exponentials and target logit; the
splits (a few per row) are merged in torch. Backward: per vocabulary chunk, one kernel recomputes
the logits tile by tile and writes ``g * (softmax - onehot)`` in the input dtype; cuBLAS then adds
its products with the weight and the hidden states. Imported only where CUDA and triton are
(``linear_ce.default_backend``); ``TRITON_INTERPRET=1`` runs it on CPU tensors.
"""

import torch
import triton
import triton.language as tl

DLOGITS_CHUNK_ELEMENTS = 1 << 26
"""Elements of one backward chunk of logit gradients (128 MB in bf16)."""


@triton.jit
def _logits_tile(hidden_ptr, weight_ptr, offs_m, offs_n, row_ok, col_ok, width, stride_h, stride_w,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRECISION: tl.constexpr):
    """fp32 [BLOCK_M, BLOCK_N] tile of hidden @ weight.T."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, width, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < width
        a = tl.load(hidden_ptr + offs_m[:, None] * stride_h + offs_k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(weight_ptr + offs_n[:, None] * stride_w + offs_k[None, :],
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _forward_kernel(hidden_ptr, weight_ptr, target_ptr, max_ptr, sum_ptr, picked_ptr,
                    rows, vocab, width, cols_per_split, stride_h, stride_w,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr):
    split = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < rows
    targets = tl.load(target_ptr + offs_m, mask=row_ok, other=-1)
    run_max = tl.full([BLOCK_M], float('-inf'), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    picked = tl.zeros([BLOCK_M], dtype=tl.float32)
    col_start = split * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, vocab)
    for n0 in range(col_start, col_end, BLOCK_N):  # every tile holds at least one column
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < col_end
        acc = _logits_tile(hidden_ptr, weight_ptr, offs_m, offs_n, row_ok, col_ok, width, stride_h,
                           stride_w, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        logits = tl.where(col_ok[None, :], acc, float('-inf'))
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
        picked += tl.sum(tl.where(offs_n[None, :] == targets[:, None], acc, 0.0), axis=1)
    out = split * rows + offs_m
    tl.store(max_ptr + out, run_max, mask=row_ok)
    tl.store(sum_ptr + out, run_sum, mask=row_ok)
    tl.store(picked_ptr + out, picked, mask=row_ok)


@triton.jit
def _dlogits_kernel(hidden_ptr, weight_ptr, target_ptr, lse_ptr, grad_ptr, out_ptr,
                    rows, cols, width, col_offset, stride_h, stride_w, stride_o,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr):
    """out[:, :cols] = g * (softmax - onehot) for the vocabulary columns col_offset + [0, cols)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = offs_m < rows, offs_n < cols
    acc = _logits_tile(hidden_ptr, weight_ptr + col_offset * stride_w, offs_m, offs_n, row_ok, col_ok,
                       width, stride_h, stride_w, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
    lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
    grad = tl.load(grad_ptr + offs_m, mask=row_ok, other=0.0)
    targets = tl.load(target_ptr + offs_m, mask=row_ok, other=-1)
    onehot = (col_offset + offs_n)[None, :] == targets[:, None]
    dlogits = grad[:, None] * (tl.exp(acc - lse[:, None]) - tl.where(onehot, 1.0, 0.0))
    tl.store(out_ptr + offs_m[:, None] * stride_o + offs_n[None, :],
             dlogits.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _add_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp32 ``total + a @ b`` whatever the inputs' dtype: one GEMM summing in fp32, no bf16
    rounding of each vocabulary chunk's share."""
    if a.dtype == torch.float32:
        return total.addmm_(a, b)
    return torch.addmm(total, a, b, out_dtype=torch.float32)


class TritonKernels:
    """``linear_ce`` backend; block sizes tuned for Hopper in bf16 (smaller ones serve tests)."""

    def __init__(self, block_m: int = 128, block_n: int = 128, block_k: int = 64, num_warps: int = 8,
                 num_stages: int = 3, dlogits_chunk_elements: int = DLOGITS_CHUNK_ELEMENTS):
        self.block_m, self.block_n, self.block_k = block_m, block_n, block_k
        self.launch = dict(num_warps=num_warps, num_stages=num_stages)
        self.dlogits_chunk_elements = dlogits_chunk_elements

    def _blocks(self, hidden):
        # fp32 inputs keep full fp32 products (tf32 would not match the unfused head)
        precision = 'ieee' if hidden.dtype == torch.float32 else 'tf32'
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_K=self.block_k, PRECISION=precision)

    def _splits(self, rows: int, vocab: int, device) -> int:
        """Vocabulary splits per block of rows: enough programs to fill the GPU four times."""
        row_blocks = triton.cdiv(rows, self.block_m)
        processors = (torch.cuda.get_device_properties(device).multi_processor_count
                      if device.type == 'cuda' else 1)
        return max(1, min(triton.cdiv(4 * processors, row_blocks), triton.cdiv(vocab, self.block_n)))

    def forward_stats(self, hidden, weight, local_targets):
        rows, width = hidden.shape
        vocab = weight.shape[0]
        splits = self._splits(rows, vocab, hidden.device)
        cols_per_split = triton.cdiv(triton.cdiv(vocab, splits), self.block_n) * self.block_n
        splits = triton.cdiv(vocab, cols_per_split)  # none empty
        stats = torch.empty(3, splits, rows, dtype=torch.float32, device=hidden.device)
        grid = (triton.cdiv(rows, self.block_m), splits)
        _forward_kernel[grid](hidden, weight, local_targets, stats[0], stats[1], stats[2],
                              rows, vocab, width, cols_per_split, hidden.stride(0), weight.stride(0),
                              **self._blocks(hidden), **self.launch)
        split_max, split_sum, picked = stats
        row_max = split_max.max(dim=0).values
        return row_max, (split_sum * torch.exp(split_max - row_max)).sum(dim=0), picked.sum(dim=0)

    def backward_grads(self, hidden, weight, local_targets, lse, grad_rows, need_hidden: bool,
                       need_weight: bool):
        rows, width = hidden.shape
        vocab = weight.shape[0]
        grad_hidden = torch.zeros(rows, width, dtype=torch.float32, device=hidden.device) if need_hidden else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        chunk = max(self.block_n, self.dlogits_chunk_elements // max(rows, 1) // self.block_n * self.block_n)
        dlogits = torch.empty(rows, min(chunk, vocab), dtype=hidden.dtype, device=hidden.device)
        for start in range(0, vocab, chunk):
            cols = min(chunk, vocab - start)
            out = dlogits[:, :cols]
            grid = (triton.cdiv(rows, self.block_m), triton.cdiv(cols, self.block_n))
            _dlogits_kernel[grid](hidden, weight, local_targets, lse, grad_rows, out, rows, cols, width,
                                  start, hidden.stride(0), weight.stride(0), out.stride(0),
                                  **self._blocks(hidden), **self.launch)
            if need_hidden:
                grad_hidden = _add_product(grad_hidden, out, weight[start:start + cols])
            if need_weight:
                torch.mm(out.t(), hidden, out=grad_weight[start:start + cols])
        return grad_hidden, grad_weight
