// Route policies of the CPU engine: (route k, channel d, position j) -> Token, one per op family,
// all through the index maths of xscan/scan_math.h.
#pragma once

#include <cstdint>

#include "scan_engine.h"
#include "xscan/scan_math.h"

namespace xscan {
namespace cpu {

inline Token pixel_token(int m, int64_t e, int64_t c, int64_t r, int64_t w) {
  return Token{m, e, c, r, w, c, r, w, false};
}

// SS2D's four cross routes over an H x W map; with H = 1, W = L and one route it is the plain
// selective scan over time.
struct CrossRoutes {
  static constexpr bool kScalarDecay = false;
  int64_t H, W;
  int64_t length() const { return H * W; }
  Token at(int64_t k, int64_t d, int64_t j) const {
    const int64_t s = cross_route(k, j, H, W);
    return pixel_token(0, s, d, s / W, s % W);
  }
};

// ES2D: route k walks sub-lattice k of the map padded to even H, W.
struct AtrousRoutes {
  static constexpr bool kScalarDecay = false;
  int64_t H, W, Hq, Wq;
  AtrousRoutes(int64_t H_, int64_t W_) : H(H_), W(W_), Hq(atrous_extent(H_)), Wq(atrous_extent(W_)) {}
  int64_t length() const { return Hq * Wq; }
  Token at(int64_t k, int64_t d, int64_t j) const {
    const int64_t q = atrous_route(k, j, Hq, Wq);
    int64_t h, w;
    Token t = pixel_token(0, q, d, 0, 0);
    t.pad = !atrous_pixel(k, q, H, W, Wq, &h, &w);
    if (!t.pad) t.ur = t.yr = h, t.uw = t.yw = w;
    return t;
  }
};

// cross_ss2d: route k over 2L positions alternating the two modalities.
struct CrossPairRoutes {
  static constexpr bool kScalarDecay = false;
  int64_t H, W;
  int64_t length() const { return 2 * H * W; }
  Token at(int64_t k, int64_t d, int64_t p) const {
    const int64_t s = cross_pair_spatial(k, p, H, W);
    return pixel_token(cross_pair_modality(p), s, d, s / W, s % W);
  }
};

// interleave_ss2d: cross routes over the realigned (Hr, Wr) map; u is read from the map, channel and
// column the realignment takes that pixel from, y is written in the realigned layout.
struct RealignRoutes {
  static constexpr bool kScalarDecay = false;
  int64_t Hr, Wr, C, W;  // realigned map; channels and width of each input map
  int32_t mode, axis;
  int64_t length() const { return Hr * Wr; }
  Token at(int64_t k, int64_t d, int64_t j) const {
    const int64_t s = cross_route(k, j, Hr, Wr);
    const int64_t hr = s / Wr, wr = s % Wr;
    const RealignSource src = realign_source(mode, axis, C, W, d, wr);
    return Token{src.m, s, src.c, hr, src.w, d, hr, wr, false};
  }
};

// ssd_exchange: channel d is a head; its 2P "routes" are the head's P channels in each direction
// (k < P: modality 0), all over time, sharing dt and a scalar decay exp(dt A) per step.
struct HeadRoutes {
  static constexpr bool kScalarDecay = true;
  int64_t P, L;
  int64_t length() const { return L; }
  Token at(int64_t k, int64_t d, int64_t t) const {
    return pixel_token(static_cast<int>(k / P), t, d, k % P, t);
  }
};

}  // namespace cpu
}  // namespace xscan
