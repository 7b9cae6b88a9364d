"""CUDA kernels with known memory behaviour, for the tracer's tests."""

TRACE_SRC = r"""
// 32 lanes read floats 8 apart (32 bytes): every lane its own sector.
extern "C" __global__ void strided_load(const float* x, float* y) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  y[i] = x[i * 8];  // STRIDED
}

extern "C" __global__ void coalesced_load(const float* x, float* y) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  y[i] = x[i] * 2.f;
}

extern "C" __global__ void float4_load(const float4* x, float* y) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  float4 v = x[i];
  y[i] = v.x + v.y + v.z + v.w;
}

// Lane t walks row t of a 32 x 32 tile: all lanes hit one bank at a time.
extern "C" __global__ void column_walk(const float* x, float* y) {
  __shared__ float tile[32][32];
  unsigned t = threadIdx.x;
  for (int r = 0; r < 32; ++r) tile[r][t] = x[r * 32 + t];  // ROW_STORE
  __syncthreads();
  float s = 0.f;
  for (int c = 0; c < 32; ++c) s += tile[t][c];  // COLUMN_WALK
  y[t] = s;
}

// The same tile padded to 33 columns: the column walk is conflict-free.
extern "C" __global__ void padded_column_walk(const float* x, float* y) {
  __shared__ float tile[32][33];
  unsigned t = threadIdx.x;
  for (int r = 0; r < 32; ++r) tile[r][t] = x[r * 32 + t];
  __syncthreads();
  float s = 0.f;
  for (int c = 0; c < 32; ++c) s += tile[t][c];
  y[t] = s;
}

// 8-byte shared accesses: contiguous (two half-warp phases, no conflict) and
// with a stride of two doubles (two-way conflicts in each half warp).
extern "C" __global__ void shared_doubles(const double* x, double* y) {
  __shared__ double buf[64];
  unsigned t = threadIdx.x;
  buf[t] = x[t];
  buf[t + 32] = x[t + 32];
  __syncthreads();
  y[t] = buf[t] + buf[2 * t];  // DOUBLES
}

// Every lane reads the same shared word (a broadcast) and the same global float.
extern "C" __global__ void broadcast(const float* x, float* y) {
  __shared__ float v[1];
  if (threadIdx.x == 0) v[0] = x[0];
  __syncthreads();
  y[blockIdx.x * blockDim.x + threadIdx.x] = v[0] + x[0];
}

extern "C" __global__ void count_up(int* counter, float* y) {
  atomicAdd(counter, 1);
  y[blockIdx.x * blockDim.x + threadIdx.x] = 1.f;
}
"""
