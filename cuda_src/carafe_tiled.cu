// One NVRTC module of tiled kernels: a single storage type and kernel size,
// chosen by the launcher, which prepends
//   #define CARAFE_TILED_SUFFIX float32
//   #define CARAFE_TILED_SCALAR float
//   #define CARAFE_TILED_K 5
//   #define CARAFE_TILED_PAIRS 1   (0 where two pixels per thread do not fit; also
//                                   the four-pixel grad_features)
//   #define CARAFE_TILED_FUSED 1   (0 where the fused kernels would spill)
// Small modules compile in seconds, and only the ones in use get built.
#include "carafe_tiled.cuh"

#ifndef CARAFE_TILED_K
#error "carafe_tiled.cu needs CARAFE_TILED_SUFFIX, CARAFE_TILED_SCALAR and CARAFE_TILED_K"
#endif

#define CARAFE_TILED_EXPAND(suffix, scalar_t, K) CARAFE_DEFINE_TILED_K_SINGLE(suffix, scalar_t, K)
#define CARAFE_TILED_EXPAND_PAIRS(suffix, scalar_t, K) CARAFE_DEFINE_TILED_PAIRS_K(suffix, scalar_t, K)

CARAFE_TILED_EXPAND(CARAFE_TILED_SUFFIX, CARAFE_TILED_SCALAR, CARAFE_TILED_K)
#if CARAFE_TILED_FUSED
#define CARAFE_TILED_EXPAND_FUSED(suffix, scalar_t, K) CARAFE_DEFINE_FUSED_K(suffix, scalar_t, K)
CARAFE_TILED_EXPAND_FUSED(CARAFE_TILED_SUFFIX, CARAFE_TILED_SCALAR, CARAFE_TILED_K)
#endif
#if CARAFE_TILED_PAIRS
CARAFE_TILED_EXPAND_PAIRS(CARAFE_TILED_SUFFIX, CARAFE_TILED_SCALAR, CARAFE_TILED_K)
#if CARAFE_TILED_FUSED
#define CARAFE_TILED_EXPAND_FUSED_PAIRS(suffix, scalar_t, K) CARAFE_DEFINE_FUSED_QUAD_K(suffix, scalar_t, K)
CARAFE_TILED_EXPAND_FUSED_PAIRS(CARAFE_TILED_SUFFIX, CARAFE_TILED_SCALAR, CARAFE_TILED_K)
#endif
#define CARAFE_TILED_EXPAND_FEATURES_QUAD(suffix, scalar_t, K) CARAFE_DEFINE_FEATURES_QUAD_K(suffix, scalar_t, K)
CARAFE_TILED_EXPAND_FEATURES_QUAD(CARAFE_TILED_SUFFIX, CARAFE_TILED_SCALAR, CARAFE_TILED_K)
#if CARAFE_TILED_K == 5
#define CARAFE_TILED_EXPAND_MASKS_ROW(suffix, scalar_t, K) CARAFE_DEFINE_MASKS_ROW_K(suffix, scalar_t, K)
CARAFE_TILED_EXPAND_MASKS_ROW(CARAFE_TILED_SUFFIX, CARAFE_TILED_SCALAR, CARAFE_TILED_K)
#endif
#endif
