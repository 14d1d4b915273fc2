"""Entropy coding of integer, permutation and float streams: ``constriction``'s range coder, our models.

**Block-adaptive model.** An integer stream becomes a stream of small *symbols* (below), coded in blocks of
growing size (16, 32, ... 65536). All symbols of a block are coded with one categorical distribution built from
the counts of every symbol coded before the block (a seen symbol weighs ``2 * count + 1``; the unseen ones share
a small weight); the counts are updated after the block. The decoder decodes the block with the same
distribution and updates the same counts: no table is stored, each block is one vectorized ``constriction``
call, and as the weights come from integer counts (at most one IEEE division), encoder and decoder build
bit-identical models on every machine.

**Symbols.** A value ``v`` with ``u = |v| < 2**(m+1)`` is its own symbol; a larger ``u`` keeps its ``m + 1``
leading bits in the symbol and its ``nraw`` lower bits are sent uniformly (``m``: the stream's mantissa width,
2, or 7 where that codes shorter). ``bucket = nraw * 2**m + (u >> nraw)`` numbers the buckets contiguously and
the symbol is ``sign(v) * bucket``: a Laplacian of any scale uses a few dozen symbols, and every int64 fits
(|symbol| <= 248 for m = 2).

Every stream ends with a CRC-32 that also covers the caller's ``count``, so truncated, flipped or mismatched
input raises ``ValueError``; the side information is validated too, against input crafted to pass the CRC.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import constriction
import numpy as np

# Submodules of the compiled extension: attributes, not importable by dotted name.
Bernoulli, Categorical, Uniform = constriction.stream.model.Bernoulli, constriction.stream.model.Categorical, \
    constriction.stream.model.Uniform
RangeDecoder, RangeEncoder = constriction.stream.queue.RangeDecoder, constriction.stream.queue.RangeEncoder

__all__ = ["encode_ints", "decode_ints", "estimate_bits", "encode_permutation", "decode_permutation",
           "encode_floats", "decode_floats"]

_FIRST_BLOCK, _MAX_BLOCK = 16, 1 << 16
_MAX_MANTISSA, _MAX_CONTEXTS = 8, 1 << 20
_RAW_PIECE = 16  # raw bits travel in pieces of <= 16 bits (constriction's Uniform sizes stay below 2**24)
_GROUP_BITS = 7  # permutations: values split by their high bits down to groups of 128 (see below)
_GROUP = 1 << _GROUP_BITS
_INTS, _PERM, _FLOATS = 1, 2, 3  # stream kinds, mixed into the CRC
_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


# --- Framing ---------------------------------------------------------------------------------------------------


def _seal(payload: bytes, kind: int, count: int, extra: int) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<BQQ", kind, count, extra)))
    return payload + crc.to_bytes(4, "little")


def _open(data: bytes, kind: int, count: int, extra: int) -> bytes:
    data = bytes(data)
    if len(data) < 4 or _seal(data[:-4], kind, count, extra)[-4:] != data[-4:]:
        raise ValueError(f"corrupt entropy-coded stream: checksum mismatch ({len(data)} bytes, count {count})")
    return data[:-4]


def _put_varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _get_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the unsigned varint at ``pos``; ValueError when truncated."""
    value = shift = 0
    while pos < len(buf) and shift < 64:
        value, pos, shift = value | (buf[pos] & 0x7F) << shift, pos + 1, shift + 7
        if not buf[pos - 1] & 0x80:
            return value, pos
    raise ValueError("corrupt entropy-coded stream: truncated side information")


def _words(payload: bytes) -> np.ndarray:
    if len(payload) % 4:
        raise ValueError("corrupt entropy-coded stream: coded part is not a whole number of 32-bit words")
    return np.frombuffer(payload, dtype="<u4").astype(np.uint32)


def _decode(decoder: RangeDecoder, *model: object) -> np.ndarray:
    try:
        return decoder.decode(*model)
    except Exception as exc:  # constriction raises AssertionError on words that no encoder produces
        raise ValueError(f"corrupt entropy-coded stream: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc


def _check_int(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")
    return int(value)


# --- Integers ---------------------------------------------------------------------------------------------------


def _max_bucket(m: int) -> int:
    """Bucket of |v| = 2**63 (the most negative int64); positive values stop one bucket below."""
    return (64 - m) << m


def _to_symbols(values: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 values -> (signed symbols, raw bit counts, raw bits)."""
    bits = values.view(np.uint64)
    u = np.where(values < 0, np.uint64(0) - bits, bits)  # |v| as uint64, exact even for -2**63
    length = np.frexp(u.astype(np.float64))[1].astype(np.int64)  # bit length of u, exact below 2**53...
    big = np.flatnonzero(u >> np.uint64(53))  # ...above, u may round up to the next power of two
    length[big] -= (u[big] >> (length[big] - 2).astype(np.uint64)) < 2
    nraw = np.maximum(length - m - 1, 0)
    shift = nraw.astype(np.uint64)
    bucket = (nraw << m) + (u >> shift).astype(np.int64)
    return np.where(values < 0, -bucket, bucket), nraw, u & ((np.uint64(1) << shift) - np.uint64(1))


def _raw_bit_counts(symbols: np.ndarray, m: int) -> np.ndarray:
    return np.maximum((np.abs(symbols) >> m) - 1, 0)


def _from_symbols(symbols: np.ndarray, raw: np.ndarray, m: int) -> np.ndarray:
    """Values from (signed symbols, raw bits), written over ``symbols`` (int64) a slice at a time: the
    temporaries then cost a slice, not the whole stream (a 100-million-value tensor would need gigabytes)."""
    for start in range(0, symbols.size, _DECODE_SLICE):
        part, bits = symbols[start : start + _DECODE_SLICE], raw[start : start + _DECODE_SLICE]
        nraw = _raw_bit_counts(part, m)
        u = ((np.abs(part) - (nraw << m)).astype(np.uint64) << nraw.astype(np.uint64)) | bits
        if np.any((part == -_max_bucket(m)) & (bits != 0)):
            raise ValueError("corrupt entropy-coded stream: a value below the int64 range")
        part[:] = np.where(part < 0, np.uint64(0) - u, u).view(np.int64)
    return symbols


_DECODE_SLICE = 1 << 20


def _raw_pieces(nraw: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(value indices, bits in the piece, shift) of each 16-bit piece of the raw bits, lowest piece first."""
    for shift in range(0, 64, _RAW_PIECE):
        where = np.flatnonzero(nraw > shift)
        if where.size:
            yield where, np.minimum(nraw[where].astype(np.int64) - shift, _RAW_PIECE), shift


def _blocks(count: int) -> Iterator[tuple[int, int]]:
    start, size = 0, _FIRST_BLOCK
    while start < count:
        yield start, min(count, start + size)
        start, size = start + size, min(2 * size, _MAX_BLOCK)


def _weights(counts: np.ndarray) -> np.ndarray:
    """2c + 1 per seen symbol; the unseen share at most (seen + 1), so a sparse alphabet wastes little."""
    weights, unseen = 2.0 * counts + 1.0, int(np.count_nonzero(counts == 0))
    if unseen:
        weights[counts == 0] = min(1.0, (counts.size - unseen + 1) / unseen)
    return weights


def _adaptive_blocks(symbols: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(block, weights it is coded with): the block-adaptive model as the encoder and the estimator see it."""
    counts = np.zeros(int(symbols.max()) + 1, np.int64)
    for start, stop in _blocks(symbols.size):
        yield symbols[start:stop], _weights(counts)
        counts += np.bincount(symbols[start:stop], minlength=counts.size)


def _context_order(contexts: np.ndarray | None, num_contexts: int, count: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Value indices grouped by context (stable), each context's [start, stop) bounds in that order, and a key
    of the contexts for the CRC (decoding with other contexts than the encoder's raises ValueError)."""
    _check_int("num_contexts", num_contexts, 1, _MAX_CONTEXTS)
    if contexts is None:
        return np.arange(count), np.array([0] + [count] * num_contexts), num_contexts
    ctx = np.asarray(contexts)
    if ctx.shape != (count,) or (count and ctx.dtype.kind not in "iu"):
        raise ValueError(f"contexts must be an integer array of shape ({count},), got {ctx.dtype} {ctx.shape}")
    if count and (ctx.min() < 0 or ctx.max() >= num_contexts):
        raise ValueError(f"contexts must lie in 0..{num_contexts - 1}, got {ctx.min()}..{ctx.max()}")
    ctx = ctx.astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(ctx, minlength=num_contexts))])
    return np.argsort(ctx, kind="stable"), bounds, num_contexts | zlib.crc32(ctx.astype("<i8").tobytes()) << 32


def _mantissas(values: np.ndarray) -> tuple[int, ...]:
    """Widths to try. m = 2 loses < 0.1% to the uniform low bits on smooth distributions and has few symbols
    to learn; exact symbols (m = 7, all |v| < 256) also fit spiky ones. Equal symbols when all |v| < 8."""
    if values.size and -256 <= int(values.min()) and int(values.max()) < 256 and int(np.abs(values).max()) >= 8:
        return 2, 7
    return (2,)


def _context_symbols(values: np.ndarray, order: np.ndarray, bounds: np.ndarray, m: int):
    """Side information (m, each non-empty context's zigzag lowest symbol and span), the symbols of each
    non-constant context shifted to 0..span, and the raw bit counts and bits of all values."""
    symbols, nraw, raw = _to_symbols(values, m)
    header, streams = bytearray([m]), []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if start < stop:
            ctx_symbols = symbols[order[start:stop]]
            low, high = int(ctx_symbols.min()), int(ctx_symbols.max())
            _put_varint(header, 2 * low if low >= 0 else -2 * low - 1)
            _put_varint(header, high - low)
            if high > low:  # a constant context costs its two varints only
                streams.append((ctx_symbols - low).astype(np.int32))
    return header, streams, nraw, raw


def _encode_payload(values: np.ndarray, order: np.ndarray, bounds: np.ndarray, m: int) -> bytes:
    header, streams, nraw, raw = _context_symbols(values, order, bounds, m)
    encoder = RangeEncoder()
    for symbols in streams:
        for block, weights in _adaptive_blocks(symbols):
            encoder.encode(block, Categorical(weights, perfect=False))
    for where, bits, shift in _raw_pieces(nraw):
        pieces = (raw[where] >> np.uint64(shift)) & ((np.uint64(1) << bits.astype(np.uint64)) - np.uint64(1))
        encoder.encode(pieces.astype(np.int32), Uniform(), (1 << bits).astype(np.int32))
    return bytes(header) + encoder.get_compressed().astype("<u4").tobytes()


def _estimate_payload(values: np.ndarray, order: np.ndarray, bounds: np.ndarray, m: int) -> float:
    header, streams, nraw, _ = _context_symbols(values, order, bounds, m)
    bits = 8.0 * len(header) + float(nraw.sum())
    for symbols in streams:
        for block, weights in _adaptive_blocks(symbols):
            bits += float((np.log2(weights.sum()) - np.log2(weights))[block].sum())
    return bits


def _decode_payload(payload: bytes, count: int, order: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    if not payload or payload[0] > _MAX_MANTISSA:
        raise ValueError("corrupt entropy-coded stream: bad integer-coding mode byte")
    m, pos, top = payload[0], 1, _max_bucket(payload[0])
    ranges = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if start < stop:
            zigzag, pos = _get_varint(payload, pos)
            span, pos = _get_varint(payload, pos)
            low = zigzag // 2 if zigzag % 2 == 0 else -(zigzag + 1) // 2
            if low < -top or low + span > top - 1:
                raise ValueError(f"corrupt entropy-coded stream: symbols {low}..{low + span} out of bounds")
            ranges.append((start, stop, low, span))
    decoder, symbols = RangeDecoder(_words(payload[pos:])), np.empty(count, np.int64)
    for start, stop, low, span in ranges:
        shifted, counts = np.zeros(stop - start, np.int32), np.zeros(span + 1, np.int64)
        for b0, b1 in _blocks(shifted.size if span else 0):  # _adaptive_blocks, decoding each block first
            shifted[b0:b1] = _decode(decoder, Categorical(_weights(counts), perfect=False), b1 - b0)
            counts += np.bincount(shifted[b0:b1], minlength=counts.size)
        symbols[order[start:stop]] = shifted + low
    raw = np.zeros(count, np.uint64)
    nraw = np.empty(count, np.int8)  # at most 64 raw bits per value
    for start in range(0, count, _DECODE_SLICE):
        nraw[start : start + _DECODE_SLICE] = _raw_bit_counts(symbols[start : start + _DECODE_SLICE], m)
    for where, bits, shift in _raw_pieces(nraw):
        raw[where] |= _decode(decoder, Uniform(), (1 << bits).astype(np.int32)).astype(np.uint64) << np.uint64(shift)
    return _from_symbols(symbols, raw, m)


# A stream whose adaptive coding would cost more than plain fixed-width packing (few values, nearly uniform ones)
# is stored packed instead: mode byte _PACKED, the lowest value and the span (varints), then each value minus the
# lowest at ceil(log2(span + 1)) bits, big-endian bits. So a stream never costs more than its fixed width + a few
# bytes.
_PACKED = 0xFF
_MAX_PACKED_BITS = 32


def _packed_payload(values: np.ndarray) -> bytes | None:
    if not values.size:
        return None
    low, high = int(values.min()), int(values.max())
    width = max(1, (high - low).bit_length())
    if width > _MAX_PACKED_BITS:
        return None
    header = bytearray([_PACKED])
    _put_varint(header, 2 * low if low >= 0 else -2 * low - 1)
    _put_varint(header, high - low)
    offsets = (values - low).astype(np.uint64)
    bits = ((offsets[:, None] >> np.arange(width - 1, -1, -1, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return bytes(header) + np.packbits(bits.reshape(-1)).tobytes()


def _decode_packed(payload: bytes, count: int) -> np.ndarray:
    zigzag, pos = _get_varint(payload, 1)
    span, pos = _get_varint(payload, pos)
    low = zigzag // 2 if zigzag % 2 == 0 else -(zigzag + 1) // 2
    width = max(1, span.bit_length())
    if width > _MAX_PACKED_BITS or low < -(1 << 63) or low + span >= 1 << 63:
        raise ValueError("corrupt entropy-coded stream: packed values out of bounds")
    if len(payload) - pos != (count * width + 7) // 8:
        raise ValueError("corrupt entropy-coded stream: packed values of the wrong length")
    bits = np.unpackbits(np.frombuffer(payload, np.uint8, offset=pos))[: count * width].reshape(count, width)
    offsets = bits.astype(np.uint64) @ (np.uint64(1) << np.arange(width - 1, -1, -1, dtype=np.uint64))
    if count and int(offsets.max()) > span:
        raise ValueError("corrupt entropy-coded stream: a packed value beyond the span")
    return (offsets.astype(np.int64) + low).astype(np.int64)


def _as_int64(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size and (array.dtype.kind not in "iub" or array.dtype == np.uint64 and int(array.max()) >= 1 << 63):
        raise ValueError(f"expected integers that fit in int64, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)


def encode_ints(values: np.ndarray, *, contexts: np.ndarray | None = None, num_contexts: int = 1) -> bytes:
    """Code integers of any int64 value, each context with its own block-adaptive model.

    Args:
        values: integer array (flattened): quantized weights, 0/1 masks, small indices...
        contexts: optional integer array of the same length, values in ``0..num_contexts-1``; the decoder
            needs the same array (e.g. a class derived from data it has already decoded).
        num_contexts: number of contexts, 1..2**20.

    Returns:
        Mode byte ``m``, two varints per non-empty context (lowest symbol, span), range-coded words, CRC-32; or,
        when that is shorter, the values packed at a fixed width (mode byte 255, lowest value, span, bits).

    Raises:
        ValueError: values that are not integers within int64, or invalid contexts.

    Example:
        >>> decode_ints(encode_ints(np.array([0, 1, -1, 0, 3])), 5).tolist()
        [0, 1, -1, 0, 3]
    """
    array = _as_int64(values)
    order, bounds, key = _context_order(contexts, num_contexts, array.size)
    candidates = [_encode_payload(array, order, bounds, m) for m in _mantissas(array)]
    packed = _packed_payload(array)
    payload = min(candidates + ([packed] if packed is not None else []), key=len)
    return _seal(payload, _INTS, array.size, key)


def decode_ints(data: bytes, count: int, *, contexts: np.ndarray | None = None, num_contexts: int = 1) -> np.ndarray:
    """Inverse of ``encode_ints``.

    Args:
        data: bytes from ``encode_ints``.
        count: number of values (stored by the caller; checked by the CRC).
        contexts: the array given to ``encode_ints``, or None.
        num_contexts: as given to ``encode_ints``.

    Returns:
        int64 array of shape ``(count,)``.

    Raises:
        ValueError: corrupt, truncated or mismatched data, or invalid arguments.

    Example:
        >>> decode_ints(encode_ints(np.arange(3)), 3).tolist()
        [0, 1, 2]
    """
    count = _check_int("count", count, 0, 1 << 40)
    order, bounds, key = _context_order(contexts, num_contexts, count)
    payload = _open(data, _INTS, count, key)
    if payload[:1] == bytes([_PACKED]):
        return _decode_packed(payload, count)
    return _decode_payload(payload, count, order, bounds)


def estimate_bits(values: np.ndarray, contexts: np.ndarray | None = None, num_contexts: int = 1) -> float:
    """Size of ``encode_ints(values, ...)`` in bits from the same models, without the coder (for rate search).

    Args:
        values: as for ``encode_ints``.
        contexts: as for ``encode_ints``.
        num_contexts: as for ``encode_ints``.

    Returns:
        Estimated bits, side information and CRC included; below the real size by 0..64 bits (coder flush and
        32-bit words).

    Raises:
        ValueError: as ``encode_ints``.

    Example:
        >>> estimate_bits(np.zeros(1000, np.int64))
        56.0
    """
    array = _as_int64(values)
    order, bounds, _ = _context_order(contexts, num_contexts, array.size)
    coded = min(_estimate_payload(array, order, bounds, m) for m in _mantissas(array))
    if array.size:
        span = int(array.max()) - int(array.min())
        if span.bit_length() <= _MAX_PACKED_BITS:
            coded = min(coded, 8.0 * (3 + (array.size * max(1, span.bit_length()) + 7) // 8))
    return coded + 32


# --- Permutations -----------------------------------------------------------------------------------------------
#
# log2(N!) bits need each value's rank among the values not used yet, but decoding ranks is sequential. So the
# values are first split by their bits from the top: at level b, the positions whose values share the bits above
# b (a group: its values are a known range of 2**(b+1)) are listed in position order, and the stream holds bit b
# of each. A full group has as many ones as zeros; coding its bits at p = 1/2 loses only about log2(size)/2 bits
# per group. Each level is one vectorized stable split of every group into its 0 and 1 halves. Groups of 128
# values are then finished with the exact Lehmer code (each value's rank among the later values of its group),
# 128 vectorized steps over all groups: about 0.4% above log2(N!) in all.


def _levels(count: int) -> range:
    return range(max(count - 1, 0).bit_length() - 1, _GROUP_BITS - 1, -1)


def _tail(count: int, level: int) -> tuple[int, int, int]:
    """Slots in full groups at ``level``, then the size and the number of ones of the last, partial group."""
    full = count // (2 << level) * (2 << level)
    return full, count - full, max(count - full - (1 << level), 0)


def _split_level(order: np.ndarray, bits: np.ndarray, level: int) -> np.ndarray:
    """Stable-split each group of 2**(level+1) slots by ``bits``: its zeros first, its ones from 2**level on."""
    slot = np.arange(order.size)
    start = slot >> (level + 1) << (level + 1)
    zero = bits == 0
    zeros_before = np.cumsum(zero) - zero
    zeros_before -= zeros_before[start]
    new_order = np.empty_like(order)
    new_order[np.where(zero, start + zeros_before, slot + (1 << level) - zeros_before)] = order
    return new_order


def _group_matrix(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (row k, group q): slot q*128 + k, and the Uniform size of rank k (group size - k; < 2: not coded)."""
    columns, k = -(-count // _GROUP), np.arange(_GROUP)[:, None]
    slots = np.arange(columns * _GROUP).reshape(columns, _GROUP).T
    return slots, np.minimum(count - (slots - k), _GROUP) - k


def encode_permutation(perm: np.ndarray) -> bytes:
    """Code a permutation of 0..N-1 in about log2(N!) bits (+0.4% and about 12 bytes for N >= 1000).

    Args:
        perm: integer array holding each of 0..N-1 exactly once.

    Returns:
        Range-coded words, then a CRC-32; N itself is not stored.

    Raises:
        ValueError: ``perm`` is not a permutation of 0..N-1.

    Example:
        >>> decode_permutation(encode_permutation(np.array([2, 0, 1])), 3).tolist()
        [2, 0, 1]
    """
    array = np.asarray(perm).reshape(-1)
    count = array.size
    if count and (array.dtype.kind not in "iu" or array.min() < 0 or array.max() >= count
                  or np.bincount(array.astype(np.int64), minlength=count).max() != 1):
        raise ValueError(f"expected a permutation of 0..{count - 1}")
    array, encoder, order = array.astype(np.int64), RangeEncoder(), np.arange(count)
    for level in _levels(count):
        full, size, ones = _tail(count, level)
        bits = ((array[order] >> level) & 1).astype(np.uint8)
        if full:
            encoder.encode(np.packbits(bits[:full]).astype(np.int32), Uniform(256))
        if ones:
            encoder.encode(bits[full:].astype(np.int32), Bernoulli(ones / size, perfect=False))
        order = _split_level(order, bits, level)
    slots, sizes = _group_matrix(count)
    valid = slots < count
    ranks = np.full(slots.shape, _GROUP, np.int16)  # past the end: above every rank
    ranks[valid] = array[order[slots[valid]]] & (_GROUP - 1)
    lehmer = np.zeros_like(ranks)
    for k in range(_GROUP - 1):
        lehmer[k] = np.count_nonzero(ranks[k + 1:] < ranks[k], axis=0)
    encoder.encode(lehmer[sizes >= 2].astype(np.int32), Uniform(), sizes[sizes >= 2].astype(np.int32))
    return _seal(encoder.get_compressed().astype("<u4").tobytes(), _PERM, count, 0)


def decode_permutation(data: bytes, count: int) -> np.ndarray:
    """Inverse of ``encode_permutation``.

    Args:
        data: bytes from ``encode_permutation``.
        count: N (stored by the caller; checked by the CRC).

    Returns:
        int64 array of shape ``(count,)``, a permutation of 0..count-1.

    Raises:
        ValueError: corrupt, truncated or mismatched data.

    Example:
        >>> decode_permutation(encode_permutation(np.arange(4)), 4).tolist()
        [0, 1, 2, 3]
    """
    count = _check_int("count", count, 0, 1 << 31)
    decoder, order = RangeDecoder(_words(_open(data, _PERM, count, 0))), np.arange(count)
    for level in _levels(count):
        full, size, ones = _tail(count, level)
        bits = np.zeros(count, np.uint8)
        if full:
            bits[:full] = np.unpackbits(_decode(decoder, Uniform(256), -(-full // 8)).astype(np.uint8))[:full]
        if ones:
            bits[full:] = _decode(decoder, Bernoulli(ones / size, perfect=False), size)
        if np.any(bits[:full].reshape(-1, 2 << level).sum(axis=1) != 1 << level) or bits[full:].sum() != ones:
            raise ValueError("corrupt permutation stream: a group holds the wrong number of ones")
        order = _split_level(order, bits, level)
    slots, sizes = _group_matrix(count)
    ranks = np.zeros(slots.shape, np.int16)
    ranks[sizes >= 2] = _decode(decoder, Uniform(), sizes[sizes >= 2].astype(np.int32))
    for k in range(_GROUP - 2, -1, -1):  # insert rank k among the ranks after it
        ranks[k + 1:] += ranks[k + 1:] >= ranks[k]
    valid, perm = slots < count, np.empty(count, np.int64)
    perm[order[slots[valid]]] = (slots[valid] & ~(_GROUP - 1)) + ranks[valid]
    return perm


# --- Floats: byte planes (sign and exponent in the top one) as exact symbols, or raw where that is shorter ------


def _little(dtype: np.dtype) -> np.dtype:
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"expected float16, float32 or float64, got {dtype}")
    return dtype.newbyteorder("<")


def encode_floats(values: np.ndarray) -> bytes:
    """Code a float16/32/64 array losslessly (NaN payloads and -0.0 too), never above raw + 5 bytes.

    Args:
        values: float array (flattened).

    Returns:
        Flag byte (bit k: byte plane k is coded), then from the most significant plane down either a varint
        length and an integer payload (exact byte symbols, one adaptive model) or the raw plane; CRC-32.

    Raises:
        ValueError: any other dtype.

    Example:
        >>> x = np.array([0.5, -0.0, np.inf], np.float32)
        >>> decode_floats(encode_floats(x), 3, np.float32).tobytes() == x.tobytes()
        True
    """
    array = np.asarray(values)
    little = _little(array.dtype)
    planes = np.ascontiguousarray(array.reshape(-1), dtype=little).view(np.uint8).reshape(-1, little.itemsize)
    order, bounds, _ = _context_order(None, 1, planes.shape[0])
    flags, parts = 0, []
    for k in range(little.itemsize - 1, -1, -1):
        coded, length = _encode_payload(planes[:, k].astype(np.int64), order, bounds, 7), bytearray()
        _put_varint(length, len(coded))
        flags |= (len(length) + len(coded) < planes.shape[0]) << k
        parts.append(bytes(length) + coded if flags >> k & 1 else planes[:, k].tobytes())
    return _seal(bytes([flags]) + b"".join(parts), _FLOATS, planes.shape[0], little.itemsize)


def decode_floats(data: bytes, count: int, dtype: np.dtype | type | str) -> np.ndarray:
    """Inverse of ``encode_floats``.

    Args:
        data: bytes from ``encode_floats``.
        count: number of values (stored by the caller; checked by the CRC).
        dtype: float16, float32 or float64, as encoded.

    Returns:
        Array of shape ``(count,)`` and ``dtype``, bit-identical to the encoded one.

    Raises:
        ValueError: corrupt, truncated or mismatched data, or another dtype.

    Example:
        >>> decode_floats(encode_floats(np.ones(2, np.float16)), 2, "float16").tolist()
        [1.0, 1.0]
    """
    count, little = _check_int("count", count, 0, 1 << 40), _little(np.dtype(dtype))
    payload = _open(data, _FLOATS, count, little.itemsize)
    if not payload or payload[0] >> little.itemsize:
        raise ValueError("corrupt float stream: bad flag byte")
    (order, bounds, _), planes, pos = _context_order(None, 1, count), np.empty((count, little.itemsize), np.uint8), 1
    for k in range(little.itemsize - 1, -1, -1):
        if payload[0] >> k & 1:
            length, pos = _get_varint(payload, pos)
            plane = _decode_payload(payload[pos:pos + length], count, order, bounds)
            if count and (plane.min() < 0 or plane.max() > 255):
                raise ValueError("corrupt float stream: a byte plane holds values beyond 0..255")
            planes[:, k], pos = plane, pos + length
        elif pos + count <= len(payload):
            planes[:, k], pos = np.frombuffer(payload, np.uint8, count, pos), pos + count
        else:
            raise ValueError("corrupt float stream: truncated raw byte plane")
    if pos != len(payload):
        raise ValueError(f"corrupt float stream: {len(payload) - pos} bytes left over")
    return planes.view(little).reshape(-1).astype(np.dtype(dtype))
