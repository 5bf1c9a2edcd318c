"""The Triton kernels of `vllm_attention`, in a module of their own: Triton resolves the functions a kernel
calls among its module's globals, and only this module needs Triton to import."""

import triton
import triton.language as tl


@triton.jit  # type: ignore[untyped-decorator]
def load_rows(  # type: ignore[no-untyped-def]
    kv_cache,
    block_table,
    seq,
    bt_stride,
    head,
    kv_stride_block,
    kv_stride_head,
    kv_stride_position,
    position,
    end,
    dims,
    HEAD_SIZE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """One head's keys and values at `position` (those before `end`), as stored: both asked for at once."""
    valid = position < end
    page = tl.load(block_table + seq * bt_stride + position // BLOCK_SIZE, mask=valid, other=0)
    row = kv_cache + page.to(tl.int64) * kv_stride_block + head * kv_stride_head
    row = row + (position % BLOCK_SIZE) * kv_stride_position
    k = tl.load(row[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
    v = tl.load(row[:, None] + HEAD_SIZE + dims[None, :], mask=valid[:, None], other=0.0)
    return k, v


@triton.jit  # type: ignore[untyped-decorator]
def sequence_and_visible(  # type: ignore[no-untyped-def]
    query_start, seq_lens, token, real, num_seqs, CAUSAL: tl.constexpr, SEARCH: tl.constexpr
):
    """The sequence holding query `token` (the last one starting at or before it, by binary search) and how
    many of its cached positions the token sees: all of them, or (causal) the cached ones and the new ones up
    to itself."""
    low = token * 0
    high = low + num_seqs
    for _ in tl.static_range(SEARCH):
        middle = (low + high) // 2
        after = tl.load(query_start + middle, mask=middle < num_seqs, other=0) <= token
        low = tl.where(after & (middle < high), middle, low)
        high = tl.where(after, high, middle)
    seq = low
    seq_len = tl.load(seq_lens + seq, mask=real, other=0)
    visible = seq_len
    if CAUSAL:
        first_new = tl.load(query_start + seq)
        new = tl.load(query_start + seq + 1) - first_new
        visible = tl.minimum(tl.maximum(seq_len - new + (token - first_new) + 1, 0), seq_len)
    return seq, visible


@triton.jit  # type: ignore[untyped-decorator]
def shared_softmax(  # type: ignore[no-untyped-def]
    kv_cache,
    block_table,
    seq,
    bt_stride,
    head,
    kv_stride_block,
    kv_stride_head,
    kv_stride_position,
    q,
    first,
    end,
    dims,
    HEAD_SIZE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TOKENS: tl.constexpr,
    STAGES: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    """The sum of values weighted by the softmax of scores over positions `first` to `end`, relative to one
    running maximum that every iteration updates over all of its TOKENS positions (a reduction across the
    program's warps for the maximum, the denominator and the sum): (sum, maximum, denominator)."""
    positions = tl.arange(0, TOKENS)
    running_max = tl.full((), float("-inf"), tl.float32)
    denominator = tl.zeros((), tl.float32)
    acc = tl.zeros((HEAD_SIZE,), tl.float32)
    if PREFETCH:  # the first positions' keys and values, before the loop
        k_next, v_next = load_rows(
            kv_cache,
            block_table,
            seq,
            bt_stride,
            head,
            kv_stride_block,
            kv_stride_head,
            kv_stride_position,
            first + positions,
            end,
            dims,
            HEAD_SIZE,
            BLOCK_SIZE,
        )
    for start in tl.range(first, end, TOKENS, num_stages=STAGES):
        position = start + positions
        valid = position < end
        # with PREFETCH, ask for the next positions before working on these, so their wait overlaps this work
        k_loaded, v_loaded = load_rows(
            kv_cache,
            block_table,
            seq,
            bt_stride,
            head,
            kv_stride_block,
            kv_stride_head,
            kv_stride_position,
            position + TOKENS if PREFETCH else position,
            end,
            dims,
            HEAD_SIZE,
            BLOCK_SIZE,
        )
        if PREFETCH:
            k_raw, v_raw = k_next, v_next
            k_next, v_next = k_loaded, v_loaded
        else:
            k_raw, v_raw = k_loaded, v_loaded
        k = k_raw.to(tl.float32)
        scores = tl.where(valid, tl.sum(k * q[None, :], axis=1), float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        weights = tl.exp(scores - new_max)
        correction = tl.exp(running_max - new_max)
        denominator = denominator * correction + tl.sum(weights, axis=0)
        acc = acc * correction + tl.sum(weights[:, None] * v_raw.to(tl.float32), axis=0)
        running_max = new_max
    return acc, running_max, denominator


@triton.jit  # type: ignore[untyped-decorator]
def lane_softmax(  # type: ignore[no-untyped-def]
    kv_cache,
    block_table,
    seq,
    bt_stride,
    head,
    kv_stride_block,
    kv_stride_head,
    kv_stride_position,
    q,
    first,
    end,
    dims,
    HEAD_SIZE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TOKENS: tl.constexpr,
    STAGES: tl.constexpr,
):
    """What `shared_softmax` returns, but each of the TOKENS lanes (position i of every iteration) keeps its own
    maximum, denominator and sum until the loop ends, and the lanes are combined once after it: the loop makes
    no reduction across warps, only the score's over each position's dimensions."""
    positions = tl.arange(0, TOKENS)
    lane_max = tl.full((TOKENS,), float("-inf"), tl.float32)
    lane_denominator = tl.zeros((TOKENS,), tl.float32)
    lane_acc = tl.zeros((TOKENS, HEAD_SIZE), tl.float32)
    for start in tl.range(first, end, TOKENS, num_stages=STAGES):
        position = start + positions
        k_raw, v_raw = load_rows(
            kv_cache,
            block_table,
            seq,
            bt_stride,
            head,
            kv_stride_block,
            kv_stride_head,
            kv_stride_position,
            position,
            end,
            dims,
            HEAD_SIZE,
            BLOCK_SIZE,
        )
        scores = tl.where(position < end, tl.sum(k_raw.to(tl.float32) * q[None, :], axis=1), float("-inf"))
        new_max = tl.maximum(lane_max, scores)
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # a lane past the end from the start
        weights = tl.exp(scores - shift)
        correction = tl.exp(lane_max - shift)
        lane_denominator = lane_denominator * correction + weights
        lane_acc = lane_acc * correction[:, None] + weights[:, None] * v_raw.to(tl.float32)
        lane_max = new_max
    running_max = tl.max(lane_max, axis=0)
    lane_weights = tl.exp(lane_max - tl.where(running_max == float("-inf"), 0.0, running_max))
    denominator = tl.sum(lane_denominator * lane_weights, axis=0)
    acc = tl.sum(lane_acc * lane_weights[:, None], axis=0)
    return acc, running_max, denominator


# The two counts change with every batch; specialised (as Triton does by default: equal to 1, divisible by 16)
# they made more variants than vLLM's warm-up compiles, and a late one compiled during the first requests.
@triton.jit(do_not_specialize=["num_query_tokens", "num_seqs"])  # type: ignore[untyped-decorator]
def attention_kernel(  # type: ignore[no-untyped-def]  # parameters unannotated: Triton reads annotations
    query,  # [tokens, heads, head_size]
    kv_cache,  # [blocks, heads, block_size, 2 * head_size]
    block_table,  # [sequences, max blocks]
    seq_lens,  # [sequences] cached positions, new tokens included
    query_start,  # [sequences + 1] each sequence's first query token
    output,  # [tokens, heads, head_size]
    partial,  # [tokens, heads, SPLITS, head_size + 2] float32, where SPLITS > 1
    q_scale_ptr,  # float32 dequantisation scales (1.0 where not quantised)
    k_scale_ptr,
    v_scale_ptr,
    softmax_scale,
    num_query_tokens,  # real tokens; the rest pad a CUDA graph's batch
    num_seqs,
    q_stride_token,
    q_stride_head,
    kv_stride_block,
    kv_stride_head,
    kv_stride_position,
    bt_stride,
    out_stride_token,
    out_stride_head,
    HEAD_SIZE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TOKENS: tl.constexpr,
    STAGES: tl.constexpr,
    SPLITS: tl.constexpr,
    CAUSAL: tl.constexpr,
    SEARCH: tl.constexpr,
    PREFETCH: tl.constexpr,
    HEADS_FIRST: tl.constexpr,
    LANES: tl.constexpr,
):
    if HEADS_FIRST:  # a token's heads run side by side, reading the same pages of an NHD cache together
        head = tl.program_id(0)
        token = tl.program_id(1)
        heads = tl.num_programs(0)
    else:
        token = tl.program_id(0)
        head = tl.program_id(1)
        heads = tl.num_programs(1)
    split = tl.program_id(2)
    real = token < num_query_tokens
    seq, visible = sequence_and_visible(query_start, seq_lens, token, real, num_seqs, CAUSAL, SEARCH)
    dims = tl.arange(0, HEAD_SIZE)
    q = tl.load(query + token * q_stride_token + head * q_stride_head + dims, mask=real, other=0.0).to(tl.float32)
    q = q * (tl.load(q_scale_ptr) * tl.load(k_scale_ptr) * softmax_scale)
    part = tl.cdiv(visible, SPLITS * TOKENS) * TOKENS  # this program's share of the positions
    first = split * part
    end = tl.minimum(first + part, visible)
    if LANES:
        acc, running_max, denominator = lane_softmax(
            kv_cache,
            block_table,
            seq,
            bt_stride,
            head,
            kv_stride_block,
            kv_stride_head,
            kv_stride_position,
            q,
            first,
            end,
            dims,
            HEAD_SIZE,
            BLOCK_SIZE,
            TOKENS,
            STAGES,
        )
    else:
        acc, running_max, denominator = shared_softmax(
            kv_cache,
            block_table,
            seq,
            bt_stride,
            head,
            kv_stride_block,
            kv_stride_head,
            kv_stride_position,
            q,
            first,
            end,
            dims,
            HEAD_SIZE,
            BLOCK_SIZE,
            TOKENS,
            STAGES,
            PREFETCH,
        )
    if SPLITS == 1:
        out = acc * tl.load(v_scale_ptr) / tl.maximum(denominator, 1e-30)  # nothing visible: zeros
        destination = output + token * out_stride_token + head * out_stride_head + dims
        tl.store(destination, out.to(output.dtype.element_ty), mask=real)
    else:  # this part's sums, relative to its own maximum, for the combine kernel
        base = partial + ((token * heads + head) * SPLITS + split) * (HEAD_SIZE + 2)
        tl.store(base + dims, acc)
        tl.store(base + HEAD_SIZE, running_max)
        tl.store(base + HEAD_SIZE + 1, denominator)


@triton.jit(do_not_specialize=["num_query_tokens"])  # type: ignore[untyped-decorator]
def combine_kernel(  # type: ignore[no-untyped-def]
    partial,
    output,
    v_scale_ptr,
    num_query_tokens,
    out_stride_token,
    out_stride_head,
    HEAD_SIZE: tl.constexpr,
    SPLITS: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    dims = tl.arange(0, HEAD_SIZE)
    parts = tl.arange(0, SPLITS)
    base = partial + ((token * tl.num_programs(1) + head) * SPLITS + parts) * (HEAD_SIZE + 2)
    maxima = tl.load(base + HEAD_SIZE)
    overall = tl.max(maxima, axis=0)
    weights = tl.where(maxima == float("-inf"), 0.0, tl.exp(maxima - overall))  # empty parts weigh nothing
    denominator = tl.sum(weights * tl.load(base + HEAD_SIZE + 1), axis=0)
    acc = tl.sum(weights[:, None] * tl.load(base[:, None] + dims[None, :]), axis=0)
    out = acc * tl.load(v_scale_ptr) / tl.maximum(denominator, 1e-30)
    destination = output + token * out_stride_token + head * out_stride_head + dims
    tl.store(destination, out.to(output.dtype.element_ty), mask=token < num_query_tokens)
