// Route policies of the CPU engine, one per op family, all through the index maths of
// xscan/scan_math.h. at(k, j): the token at position j of route k, for every channel; source(d, t):
// what depends on the channel d (the channel of u and y; for the realignment also the map and
// column u is read from).
#pragma once

#include <cstdint>

#include "scan_engine.h"
#include "xscan/scan_math.h"

namespace xscan {
namespace cpu {

inline Token pixel_token(int m, int64_t e, int64_t r, int64_t w) { return Token{m, e, 0, r, w, 0, r, w, false}; }

// The channel of u and y is the scan's channel (so a token's pixel is the same in every channel).
struct SameChannel {
  static constexpr bool kSameChannel = true;
  void source(int64_t d, Token& t) const { t.uc = t.yc = d; }
};

// SS2D's four cross routes over an H x W map; with H = 1, W = L and one route it is the plain
// selective scan over time.
struct CrossRoutes : SameChannel {
  static constexpr bool kScalarDecay = false;
  int64_t H, W;
  CrossRoutes(int64_t H_, int64_t W_) : H(H_), W(W_) {}
  int64_t length() const { return H * W; }
  Token at(int64_t k, int64_t j) const {
    const int64_t s = cross_route(k, j, H, W);
    return pixel_token(0, s, s / W, s % W);
  }
};

// ES2D: route k walks sub-lattice k of the map padded to even H, W.
struct AtrousRoutes : SameChannel {
  static constexpr bool kScalarDecay = false;
  int64_t H, W, Hq, Wq;
  AtrousRoutes(int64_t H_, int64_t W_) : H(H_), W(W_), Hq(atrous_extent(H_)), Wq(atrous_extent(W_)) {}
  int64_t length() const { return Hq * Wq; }
  Token at(int64_t k, int64_t j) const {
    const int64_t q = atrous_route(k, j, Hq, Wq);
    int64_t h, w;
    Token t = pixel_token(0, q, 0, 0);
    t.pad = !atrous_pixel(k, q, H, W, Wq, &h, &w);
    if (!t.pad) t.ur = t.yr = h, t.uw = t.yw = w;
    return t;
  }
};

// cross_ss2d: route k over 2L positions alternating the two modalities.
struct CrossPairRoutes : SameChannel {
  static constexpr bool kScalarDecay = false;
  int64_t H, W;
  CrossPairRoutes(int64_t H_, int64_t W_) : H(H_), W(W_) {}
  int64_t length() const { return 2 * H * W; }
  Token at(int64_t k, int64_t p) const {
    const int64_t s = cross_pair_spatial(k, p, H, W);
    return pixel_token(cross_pair_modality(p), s, s / W, s % W);
  }
};

// interleave_ss2d: cross routes over the realigned (Hr, Wr) map; u is read from the map, channel and
// column the realignment takes that pixel from, y is written in the realigned layout. The realigned
// map's dt, B, C and y fill both modality slots, so only u depends on the source map.
struct RealignRoutes {
  static constexpr bool kScalarDecay = false;
  static constexpr bool kSameChannel = false;
  int64_t Hr, Wr, C, W;  // realigned map; channels and width of each input map
  int32_t mode, axis;
  int64_t length() const { return Hr * Wr; }
  Token at(int64_t k, int64_t j) const {
    const int64_t s = cross_route(k, j, Hr, Wr);
    return pixel_token(0, s, s / Wr, s % Wr);
  }
  void source(int64_t d, Token& t) const {
    const RealignSource src = realign_source(mode, axis, C, W, d, t.yw);
    t.m = src.m, t.uc = src.c, t.uw = src.w, t.yc = d;
  }
};

// ssd_exchange: channel d is a head; its 2P "routes" are the head's P channels in each direction
// (k < P: modality 0), all over time, sharing dt and a scalar decay exp(dt A) per step.
struct HeadRoutes : SameChannel {
  static constexpr bool kScalarDecay = true;
  int64_t P, L;
  HeadRoutes(int64_t P_, int64_t L_) : P(P_), L(L_) {}
  int64_t length() const { return L; }
  Token at(int64_t k, int64_t t) const { return pixel_token(static_cast<int>(k / P), t, k % P, t); }
};

}  // namespace cpu
}  // namespace xscan
