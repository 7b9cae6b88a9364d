// Kernels whose GPU time is known in closed form, compiled by NVRTC and modelled by
// tests/test_profile_synthetic.py (also run on the CPU simulator for its tracer).
// Outer loops take their trip count at run time and stay loops (unroll 1).

extern "C" __global__ void ffma_dependent(float* out, float a, float b, int n) {
    float x = threadIdx.x;
#pragma unroll 1
    for (int i = 0; i < n; ++i) {  // dependent chain
#pragma unroll
        for (int j = 0; j < 64; ++j) x = fmaf(x, a, b);
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = x;
}

extern "C" __global__ void ffma_independent(float* out, float a, float b, int n) {
    float x[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) x[c] = threadIdx.x + c;
#pragma unroll 1
    for (int i = 0; i < n; ++i) {  // independent chains
#pragma unroll
        for (int j = 0; j < 16; ++j) {
#pragma unroll
            for (int c = 0; c < 8; ++c) x[c] = fmaf(x[c], a, b);
        }
    }
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < 8; ++c) sum += x[c];
    out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

// Each lane reads word lane * stride + j: stride 1 is conflict-free, stride 32 puts
// all 32 lanes in one bank (32 wavefronts per load). volatile: loaded every pass.
extern "C" __global__ void lds_stream(float* out, int n, int stride) {
    __shared__ float tile[1024];
    for (int e = threadIdx.x; e < 1024; e += blockDim.x) tile[e] = e;  // fill
    __syncthreads();
    volatile float* words = tile + (threadIdx.x & 31) * stride;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 1
    for (int i = 0; i < n; ++i) {  // shared loads
#pragma unroll
        for (int j = 0; j < 32; ++j) acc[j & 3] += words[j];
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc[0] + acc[1] + acc[2] + acc[3];
}

extern "C" __global__ void pointer_chase(const unsigned* next, unsigned* out, int n) {
    unsigned p = threadIdx.x;
#pragma unroll 1
    for (int i = 0; i < n; ++i) p = next[p];  // chase
    out[threadIdx.x] = p;
}

extern "C" __global__ void stream_copy(const float4* in, float4* out, long long count) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = in[i];
}
