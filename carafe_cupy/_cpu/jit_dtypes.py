"""Loads and stores of the compiled CPU kernels, for every storage dtype.

The kernels see fp32 and fp64 as they are, and fp16 and bf16 as their bit
patterns (numpy has no bf16 and Numba no fp16 arithmetic): bf16 as uint16 and
fp16 as int16, so that the storage type alone picks the conversion at compile
time. ``widen`` gives the accumulation value (fp64 for fp64, fp32 otherwise);
``narrow`` rounds it once, to nearest even, into the storage type.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array, populate_array

from .jit_compile import OVERLOAD_OPTIONS, helper


@intrinsic
def _float_from_bits(typingctx, bits):
    """The fp32 whose bit pattern is the low 32 bits of the integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low_bits = context.cast(builder, args[0], signature.args[0], types.uint32)
        return builder.bitcast(low_bits, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bits_of_float(typingctx, value):
    """The uint32 bit pattern of the fp32 ``value``."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@helper
def _half_to_float(bits):
    """IEEE binary16 bits (any int) to fp32, exactly."""
    half = np.uint32(bits) & np.uint32(0xFFFF)
    sign = (half & np.uint32(0x8000)) << np.uint32(16)
    magnitude = half & np.uint32(0x7FFF)
    if magnitude >= 0x7C00:  # Inf and NaN keep their payload
        return _float_from_bits(sign | np.uint32(0x7F800000) | ((magnitude & 0x3FF) << 13))
    if magnitude >= 0x0400:  # normal: rebias the exponent from 15 to 127
        return _float_from_bits(sign | ((magnitude << np.uint32(13)) + np.uint32(0x38000000)))
    value = np.float32(magnitude) * np.float32(5.9604644775390625e-08)  # subnormal: m * 2^-24
    return -value if sign else value


@helper
def _float_to_half(value):
    """fp32 to IEEE binary16 bits (as int16), rounded to nearest even."""
    bits = np.int64(_bits_of_float(value))
    sign = (bits >> 16) & 0x8000
    magnitude = bits & 0x7FFFFFFF
    if magnitude > 0x7F800000:  # NaN stays NaN (quiet)
        result = sign | 0x7E00 | ((magnitude >> 13) & 0x3FF)
    elif magnitude >= 0x477FF000:  # 65520 and above round to Inf
        result = sign | 0x7C00
    elif magnitude >= 0x38800000:  # a normal half: rebias, then round the 13 dropped bits
        odd = (magnitude >> 13) & 1
        result = sign | ((magnitude - 0x38000000 + 0xFFF + odd) >> 13)
    else:  # a subnormal half or zero: the 24-bit significand shifted to units of 2^-24
        exponent = magnitude >> 23
        shift = 126 - exponent
        if shift > 24:
            result = sign
        else:
            significand = (magnitude & 0x7FFFFF) | 0x800000
            quotient = significand >> shift
            remainder = significand & ((1 << shift) - 1)
            half_unit = 1 << (shift - 1)
            if remainder > half_unit or (remainder == half_unit and (quotient & 1)):
                quotient += 1
            result = sign | quotient
    return np.int16(np.uint16(result))


@helper
def _bfloat_to_float(bits):
    return _float_from_bits(np.uint32(np.uint16(bits)) << np.uint32(16))


@helper
def _float_to_bfloat(value):
    bits = np.int64(_bits_of_float(value))
    if (bits & 0x7FFFFFFF) > 0x7F800000:  # NaN: keep it a (quiet) NaN
        return np.uint16((bits >> 16) | 0x40)
    return np.uint16((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


def widen(value):
    """A stored value in the accumulation dtype (Python stand-in for Numba)."""
    raise NotImplementedError("compiled-only")


def narrow(value, storage):
    """``value`` rounded once into the element type of the array ``storage``."""
    raise NotImplementedError("compiled-only")


def accumulation_zeros(shape, storage):
    """Zeros in the accumulation dtype of the array ``storage``."""
    raise NotImplementedError("compiled-only")


@overload(widen, jit_options=OVERLOAD_OPTIONS)
def _widen(value):
    if value == types.float64 or value == types.float32:
        return lambda value: value
    if value == types.uint16:
        return lambda value: _bfloat_to_float(value)
    if value == types.int16:
        return lambda value: _half_to_float(value)
    return None


@overload(narrow, jit_options=OVERLOAD_OPTIONS)
def _narrow(value, storage):
    element = storage.dtype
    if element == types.float64:
        return lambda value, storage: np.float64(value)
    if element == types.float32:
        return lambda value, storage: np.float32(value)
    if element == types.uint16:
        return lambda value, storage: _float_to_bfloat(np.float32(value))
    if element == types.int16:
        return lambda value, storage: _float_to_half(np.float32(value))
    return None


@intrinsic
def _cleared_vector(typingctx, length, storage):
    """A new 1-D array of ``length`` zeros in the accumulation dtype of ``storage``,
    allocated and cleared inline: np.zeros would compile four helper functions
    (zeros, empty, the allocator, the fill) the first time a process needs them."""
    if not isinstance(length, types.Integer) or not isinstance(storage, types.Array):
        return None
    element = types.float64 if storage.dtype == types.float64 else types.float32
    vector = types.Array(element, 1, "C")

    def codegen(context, builder, signature, args):
        count = context.cast(builder, args[0], signature.args[0], types.intp)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(
            context.get_data_type(element)))
        size = builder.mul(count, itemsize)
        meminfo = context.nrt.meminfo_alloc_aligned(
            builder, size, context.get_preferred_array_alignment(element))
        data = context.nrt.meminfo_data(builder, meminfo)
        cgutils.memset(builder, data, size, 0)
        array = make_array(vector)(context, builder)
        populate_array(array, data=builder.bitcast(data, array.data.type), shape=[count],
                       strides=[itemsize], itemsize=itemsize, meminfo=meminfo)
        return array._getvalue()

    return vector(length, storage), codegen


@overload(accumulation_zeros, jit_options=OVERLOAD_OPTIONS)
def _accumulation_zeros(shape, storage):
    if isinstance(shape, types.Integer):
        return lambda shape, storage: _cleared_vector(shape, storage)
    if storage.dtype == types.float64:
        return lambda shape, storage: np.zeros(shape, np.float64)
    return lambda shape, storage: np.zeros(shape, np.float32)
