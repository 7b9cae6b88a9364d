"""Small CUDA test kernels (only used by the simulator tests)."""

MAIN_SRC = r"""
extern "C" __global__ void vadd(const float* __restrict__ a, const float* __restrict__ b,
                                float* __restrict__ c, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    c[i] = a[i] + b[i];
}

extern "C" __global__ void idx3d(int* out) {
  unsigned nthr = blockDim.x * blockDim.y * blockDim.z;
  unsigned blk = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  unsigned thr = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  int* o = out + 6 * (blk * nthr + thr);
  o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
  o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
}

extern "C" __global__ void dyn_reverse(const float* in, float* out) {
  CARAFE_DYNAMIC_SHARED(float, buf);
  unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
  buf[t] = in[base + t];
  __syncthreads();
  out[base + t] = buf[blockDim.x - 1 - t];
}

extern "C" __global__ void dyn_reverse_extern(const double* in, double* out) {
  extern __shared__ __align__(16) double dbuf[];
  unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
  dbuf[t] = in[base + t];
  __syncthreads();
  out[base + t] = dbuf[blockDim.x - 1 - t];
}

template <int BS>
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float s[BS];
  s[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int st = BS / 2; st > 0; st >>= 1) {
    if (threadIdx.x < st) s[threadIdx.x] += s[threadIdx.x + st];
    __syncthreads();
  }
  float r = s[0];
  __syncthreads();
  return r;
}

extern "C" __global__ void __launch_bounds__(256) reduce(const float* x, float* out, int n) {
  float acc = 0.f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    acc += x[i];
  float total = block_sum<256>(acc);
  if (threadIdx.x == 0) out[blockIdx.x] = total;
}

extern "C" __global__ void warp_ops(const float* x, float* down, float* xr, float* scan,
                                    float* bcast, unsigned* ballot) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned lane = threadIdx.x % 32, warp = i / 32;
  float v = x[i];
  float d = v;
  for (int off = 16; off > 0; off >>= 1) d += __shfl_down_sync(0xffffffffu, d, off);
  if (lane == 0) down[warp] = d;
  float s = v;
  for (int m = 1; m < 32; m <<= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
  xr[i] = s;
  float sc = v;
  for (int off = 1; off < 32; off <<= 1) {
    float o = __shfl_up_sync(0xffffffffu, sc, off);
    if (lane >= off) sc += o;
  }
  scan[i] = sc;
  bcast[i] = __shfl_sync(0xffffffffu, v, 3, 8);
  unsigned b = __ballot_sync(0xffffffffu, v > 0.5f);
  __syncwarp();
  if (lane == 0) ballot[warp] = b;
}

extern "C" __global__ void atomics(const int* x, int n, float* fsum, int* imax,
                                   unsigned long long* count, double* dsum, int* imin) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    atomicAdd(fsum, float(x[i]));
    atomicMax(imax, x[i]);
    atomicMin(imin, x[i]);
    atomicAdd(count, 1ull);
    atomicAdd(dsum, double(x[i]) * 0.5);
  }
}

// Tickets in the order threads run: before and after a warp barrier, then
// after a block barrier.
extern "C" __global__ void tickets(unsigned* counter, unsigned* out) {
  unsigned t = threadIdx.x, n = blockDim.x;
  unsigned* o = out + 3 * n * blockIdx.x;
  o[t] = atomicAdd(counter + blockIdx.x, 1u);
  __syncwarp();
  o[n + t] = atomicAdd(counter + blockIdx.x, 1u);
  __syncthreads();
  o[2 * n + t] = atomicAdd(counter + blockIdx.x, 1u);
}

extern "C" __global__ void bits(const float* x, unsigned* u, float* y) {
  unsigned i = threadIdx.x;
  u[i] = __float_as_uint(x[i]);
  y[i] = __uint_as_float(__float_as_uint(x[i]) ^ 0x80000000u) + __int_as_float(__float_as_int(1.f))
       + __fmaf_rn(x[i], 2.f, 0.f) * 0.f + fmaf(0.f, __expf(x[i]), 0.f)
       + float(__longlong_as_double(__double_as_longlong(double(min(x[i], 2.f))))) * 0.f
       + rsqrtf(4.f) * 0.f + __ldg(x + i) * 0.f + float(max(1, 2u)) * 0.f;
}
"""

BROKEN_SRC = r"""
extern "C" __global__ void no_sync(const float* in, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = in[threadIdx.x];
  // Missing __syncthreads(): the neighbour may not have written its slot yet.
  out[threadIdx.x] = s[(threadIdx.x + 63) % 64];
}

extern "C" __global__ void with_sync(const float* in, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 63) % 64];
}

// A warp barrier where a block barrier belongs: another warp's slot is read.
extern "C" __global__ void warp_sync_only(const float* in, float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = in[threadIdx.x];
  __syncwarp();
  out[threadIdx.x] = s[(threadIdx.x + 32) % 64];
}

extern "C" __global__ void divergent(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1.f;
}

extern "C" __global__ void two_sites(float* out) {
  if (threadIdx.x % 2) {
    __syncthreads();  // SITE_A
  } else {
    __syncthreads();  // SITE_B
  }
  out[threadIdx.x] = 1.f;
}

extern "C" __global__ void warp_deadlock(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_sync(0xffffffffu, v, 0);
  else __syncthreads();
  out[threadIdx.x] = v;
}

extern "C" __global__ void bad_mask(float* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, 1.f, 0);
}
"""

# No barrier or warp primitive: the module runs each thread to completion in turn.
FAST_SRC = r"""
extern "C" __global__ void run_order(unsigned* counter, unsigned* out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = atomicAdd(counter + blockIdx.x, 1u);
}
"""


def line_of(src: str, marker: str) -> int:
    """1-based line number of the first line of ``src`` containing ``marker``."""
    for n, line in enumerate(src.splitlines(), 1):
        if marker in line:
            return n
    raise ValueError(marker)
